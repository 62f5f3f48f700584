"""``nn.MultiheadAttention`` with bit-packed projection weights.

``nn.MultiheadAttention`` keeps its input projection as bare parameters
(``in_proj_weight``, or ``q/k/v_proj_weight`` when the key/value sizes differ)
and reads them in its own ``forward``; in a ViT they hold about a quarter of all
weights. :class:`QuantMultiheadAttention` replaces each quantized parameter by a
:class:`~fxquant.nn.modules.PackedWeight` child (``<param>_packed``) and serves the
dequantized tensor under the original attribute name, so the unchanged
``nn.MultiheadAttention.forward`` (fast path included) runs on it. The output
projection is an ``nn.Linear`` child and is quantized as an ordinary layer.
"""

from __future__ import annotations

from torch import nn

from fxquant.core.config import QuantConfig
from fxquant.nn.modules import PackedWeight

__all__ = ["QuantMultiheadAttention", "MHA_PROJECTION_PARAMS"]

MHA_PROJECTION_PARAMS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def _projection(attr: str) -> property:
    def get(self):
        packed = self._modules.get(f"{attr}_packed")
        return packed() if packed is not None else self._parameters.get(attr)

    return property(get, doc=f"The (dequantized, if packed) ``{attr}``.")


class QuantMultiheadAttention(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` whose projection parameters may be bit-packed."""

    in_proj_weight = _projection("in_proj_weight")
    q_proj_weight = _projection("q_proj_weight")
    k_proj_weight = _projection("k_proj_weight")
    v_proj_weight = _projection("v_proj_weight")

    def __init__(self, *args, **kwargs):
        raise TypeError("build a QuantMultiheadAttention with QuantMultiheadAttention.from_float(mha, bits)")

    @classmethod
    def from_float(cls, mha: nn.MultiheadAttention, bits: dict[str, int] | int,
                   config: QuantConfig | None = None, name: str | None = None) -> "QuantMultiheadAttention":
        """Pack ``mha``'s projection parameters.

        Args:
            bits: one width for every projection parameter present, or a dict
                ``{param_name: bits}`` naming the ones to pack (others stay float).
            config: quantizer settings (its ``bits`` is overridden).
            name: the module's name, used in error messages.
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise ValueError(f"{name or 'module'}: expected nn.MultiheadAttention, got {type(mha).__name__}")
        present = [a for a in MHA_PROJECTION_PARAMS if mha._parameters.get(a) is not None]
        widths = {a: bits for a in present} if isinstance(bits, int) else dict(bits)
        unknown = sorted(set(widths) - set(present))
        if unknown:
            raise ValueError(f"{name or 'MultiheadAttention'}: no projection parameter(s) {unknown}; "
                             f"it has {present}")
        q = cls.__new__(cls)
        q.__dict__.update(mha.__dict__)
        q._parameters = {k: v for k, v in mha._parameters.items() if k not in widths}
        q._modules = dict(mha._modules)
        q._buffers = dict(mha._buffers)
        for attr, width in widths.items():
            packed = PackedWeight.from_float(mha._parameters[attr].detach(), width, config,
                                             name=f"{name}.{attr}" if name else attr)
            q._modules[f"{attr}_packed"] = packed.train(mha.training)
        return q
