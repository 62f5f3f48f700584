"""Drop-in quantized modules holding bit-packed integer weights.

Each module keeps three persistent buffers instead of a float weight:
``packed_weight`` (uint8, ``ceil(numel * bits / 8)`` bytes), ``weight_scale`` and
``weight_zero_point`` (float32, one per output channel, or one per tensor). The
float bias, if any, is kept as is.

Weight storage modes (``cache_weight``):

* ``False`` (default): only the packed bytes live in memory; every forward
  unpacks and dequantizes the weight. Memory is ``bits/32`` of the float layer,
  at the cost of an unpack per call.
* ``True``: the dequantized float weight is computed once and kept in a
  non-persistent buffer (never saved in ``state_dict``). Forward costs the same
  as the float module, memory is the float layer's plus the packed bytes.

Switch with :func:`set_weight_cache` on a module or a whole model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fxquant.core.config import QuantConfig, check_bits
from fxquant.core.packing import pack, packed_nbytes, unpack
from fxquant.core.quantizer import QuantizedWeight, dequantize, quantize_weight

__all__ = [
    "QuantLinear",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "PackedWeight",
    "DEFAULT_QUANT_MODULE_MAPPING",
    "quant_module_for",
    "set_weight_cache",
    "is_quantized_module",
]


def _clear_cache_hook(module: nn.Module, _incompatible_keys) -> None:
    # Loading new packed bytes makes a cached dequantized weight stale.
    module._weight_cache = None


class _PackedWeightMixin:
    """Buffers and (de)quantization shared by every packed-weight module."""

    def _init_packed(self, weight_shape, bits: int, per_channel: bool = True) -> None:
        self.bits = check_bits(bits, f"{type(self).__name__}: bits")
        self.weight_shape = tuple(int(s) for s in weight_shape)
        channels = self.weight_shape[0] if per_channel else 1
        numel = math.prod(self.weight_shape)
        self.register_buffer("packed_weight", torch.zeros(packed_nbytes(numel, bits), dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(channels, dtype=torch.float32))
        self.register_buffer("weight_zero_point", torch.zeros(channels, dtype=torch.float32))
        self.cache_weight = False
        # A non-persistent buffer: follows .to(device), never saved in state_dict.
        self.register_buffer("_weight_cache", None, persistent=False)
        self.register_load_state_dict_post_hook(_clear_cache_hook)

    def _set_quantized(self, qweight: QuantizedWeight) -> None:
        if tuple(qweight.codes.shape) != self.weight_shape or qweight.bits != self.bits:
            raise ValueError(
                f"{type(self).__name__}: quantized weight of shape {tuple(qweight.codes.shape)} at "
                f"{qweight.bits} bits does not fit a {self.weight_shape} layer at {self.bits} bits"
            )
        self.packed_weight = pack(qweight.codes, self.bits)
        self.weight_scale = qweight.scale.to(torch.float32).reshape(-1).clone()
        self.weight_zero_point = qweight.zero_point.to(torch.float32).reshape(-1).clone()
        self._weight_cache = None

    def weight_codes(self) -> torch.Tensor:
        """The integer codes (uint8), shaped like the float weight."""
        return unpack(self.packed_weight, self.bits, math.prod(self.weight_shape)).view(self.weight_shape)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight the module computes with (cached when ``cache_weight``)."""
        if self._weight_cache is not None:
            return self._weight_cache
        if self.bits == 8:
            # The bytes are the codes: skip unpack's copy (dequantize makes a new tensor anyway).
            codes = self.packed_weight[: math.prod(self.weight_shape)].view(self.weight_shape)
        else:
            codes = self.weight_codes()
        weight = dequantize(codes, self.weight_scale, self.weight_zero_point)
        if self.cache_weight:
            self._weight_cache = weight
        return weight

    @property
    def weight(self) -> torch.Tensor:
        # Code written for the float module (e.g. nn.MultiheadAttention reading
        # out_proj.weight) keeps working: it sees the dequantized weight.
        return self.dequantized_weight()

    def packed_nbytes(self) -> int:
        """Bytes of integer weight storage (excluding scales and zero points)."""
        return self.packed_weight.numel()

    def _weight_for(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight()
        return weight if weight.dtype == x.dtype else weight.to(x.dtype)

    @classmethod
    def _filled_from(cls, module: nn.Module, bits: int, config, name, qweight, make):
        """``make(per_channel)`` builds the empty quantized module; fill it from ``module``.

        The weight is quantized under ``config`` at ``bits`` unless ``qweight`` (computed
        beforehand, e.g. by GPTQ) is given, whose grid then decides per-channel or not.
        """
        cfg = _config_for(bits, config)
        q = make(cfg.per_channel if qweight is None else qweight.scale.numel() > 1)
        if qweight is None:
            qweight = quantize_weight(module.weight, cfg, name or cls.__name__)
        q._set_quantized(qweight)
        q.bias = _bias_copy(module)
        return q


def _config_for(bits: int, config: QuantConfig | None) -> QuantConfig:
    if config is None:
        return QuantConfig(bits=bits)
    if not isinstance(config, QuantConfig):
        raise ValueError(f"config must be a QuantConfig, got {type(config).__name__}")
    return config if config.bits == bits else config.with_bits(bits)


def _bias_copy(module: nn.Module):
    bias = getattr(module, "bias", None)
    return None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)


class QuantLinear(_PackedWeightMixin, nn.Module):
    """``nn.Linear`` with a ``bits``-bit packed weight."""

    _FLOAT_TYPES = (nn.Linear,)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 8,
                 per_channel: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self._init_packed((out_features, in_features), bits, per_channel)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_float(cls, module: nn.Linear, bits: int, config: QuantConfig | None = None,
                   name: str | None = None, qweight: QuantizedWeight | None = None) -> "QuantLinear":
        """Quantize ``module``'s weight to ``bits`` bits (or install ``qweight``); ``name`` labels errors."""
        if not isinstance(module, cls._FLOAT_TYPES):
            raise ValueError(f"{cls.__name__}.from_float expects an nn.Linear, got {type(module).__name__}")
        return cls._filled_from(module, bits, config, name, qweight, lambda per_channel: cls(
            module.in_features, module.out_features, module.bias is not None, bits=bits, per_channel=per_channel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._weight_for(x), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, bits={self.bits}")


class _QuantConvNd(_PackedWeightMixin, nn.Module):
    _FLOAT_TYPES: tuple = ()
    _DIMS = 0
    _conv_fn = None

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *,
                 bits: int = 8, per_channel: bool = True) -> None:
        super().__init__()
        n = self._DIMS
        as_tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * n  # noqa: E731
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{type(self).__name__}: channels ({in_channels}, {out_channels}) "
                             f"not divisible by groups={groups}")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"{type(self).__name__}: unknown padding_mode {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = as_tuple(kernel_size)
        self.stride = as_tuple(stride)
        self.dilation = as_tuple(dilation)
        self.padding = padding if isinstance(padding, str) else as_tuple(padding)
        self.padding_mode = padding_mode
        self._init_packed((out_channels, in_channels // groups, *self.kernel_size), bits, per_channel)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @classmethod
    def from_float(cls, module: nn.Module, bits: int, config: QuantConfig | None = None,
                   name: str | None = None, qweight: QuantizedWeight | None = None):
        """Quantize ``module``'s weight to ``bits`` bits (or install ``qweight``); ``name`` labels errors."""
        if not isinstance(module, cls._FLOAT_TYPES):
            raise ValueError(f"{cls.__name__}.from_float expects {cls._FLOAT_TYPES[0].__name__}, "
                             f"got {type(module).__name__}")
        return cls._filled_from(module, bits, config, name, qweight, lambda per_channel: cls(
            module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
            module.dilation, module.groups, module.bias is not None, module.padding_mode, bits=bits,
            per_channel=per_channel))

    def _explicit_padding(self) -> list[int]:
        """Padding for ``F.pad`` (last dim first), used when padding_mode is not zeros."""
        if self.padding == "valid":
            pairs = [(0, 0)] * self._DIMS
        elif self.padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            pairs = [(t // 2, t - t // 2) for t in totals]
        else:
            pairs = [(p, p) for p in self.padding]
        return [p for pair in reversed(pairs) for p in pair]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._weight_for(x)
        conv = type(self)._conv_fn
        if self.padding_mode == "zeros":
            return conv(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        x = F.pad(x, self._explicit_padding(), mode=self.padding_mode)
        return conv(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.dilation != (1,) * self._DIMS:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + f", bits={self.bits}"


class QuantConv1d(_QuantConvNd):
    """``nn.Conv1d`` with a ``bits``-bit packed weight."""

    _FLOAT_TYPES = (nn.Conv1d,)
    _DIMS = 1
    _conv_fn = staticmethod(F.conv1d)


class QuantConv2d(_QuantConvNd):
    """``nn.Conv2d`` with a ``bits``-bit packed weight."""

    _FLOAT_TYPES = (nn.Conv2d,)
    _DIMS = 2
    _conv_fn = staticmethod(F.conv2d)


class QuantConv3d(_QuantConvNd):
    """``nn.Conv3d`` with a ``bits``-bit packed weight."""

    _FLOAT_TYPES = (nn.Conv3d,)
    _DIMS = 3
    _conv_fn = staticmethod(F.conv3d)


class PackedWeight(_PackedWeightMixin, nn.Module):
    """A packed weight on its own: ``forward()`` returns the dequantized tensor.

    Used where a weight reaches a functional op (``F.linear``, ``F.conv2d``,
    attention) through ``get_attr`` rather than through a module call: the graph
    then calls this module in place of reading the float parameter.
    """

    def __init__(self, weight_shape, *, bits: int = 8, per_channel: bool = True) -> None:
        super().__init__()
        self._init_packed(weight_shape, bits, per_channel)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bits: int, config: QuantConfig | None = None,
                   name: str | None = None) -> "PackedWeight":
        """Quantize a bare weight tensor to ``bits`` bits; ``name`` labels errors."""
        cfg = _config_for(bits, config)
        q = cls(tuple(weight.shape), bits=bits, per_channel=cfg.per_channel)
        q._set_quantized(quantize_weight(weight, cfg, name or cls.__name__))
        return q

    def forward(self) -> torch.Tensor:
        return self.dequantized_weight()

    def extra_repr(self) -> str:
        return f"shape={self.weight_shape}, bits={self.bits}"


# Float module type -> quantized module type. Plain data: add your own entries
# (a float type and a class with the same ``from_float`` signature).
DEFAULT_QUANT_MODULE_MAPPING: dict[type, type] = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Conv3d: QuantConv3d,
}


def quant_module_for(module: nn.Module, mapping: dict[type, type] | None = None):
    """The quantized class for ``module``, or None.

    Subclasses match their nearest mapped base unless they override ``forward``.
    """
    mapping = DEFAULT_QUANT_MODULE_MAPPING if mapping is None else mapping
    for klass in type(module).__mro__:
        if klass in mapping:
            # A subclass with its own forward (e.g. weight standardisation) would lose it.
            return mapping[klass] if type(module).forward is klass.forward else None
    return None


def is_quantized_module(module: nn.Module) -> bool:
    return isinstance(module, _PackedWeightMixin)


def set_weight_cache(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every packed-weight module in ``model`` (in place) to cached or packed-only storage."""
    for module in model.modules():
        if isinstance(module, _PackedWeightMixin):
            module.cache_weight = bool(enabled)
            module._weight_cache = None
    return model
