"""Uniform weight quantizer: ``w ~ scale * (q - zero_point)`` with ``q`` in ``[0, 2**b - 1]``.

Every bit-width 1..8 uses all ``2**b`` levels:

* ``affine`` (default, ``b >= 2``): the grid spans ``[min(w, 0), max(w, 0)]`` of a
  channel (times the clipping ratio); the zero point is an integer, so 0.0 is
  exactly representable (zero-padding and pruned weights stay exact).
* ``symmetric`` (``b >= 2``): the grid spans ``[-max|w|, max|w|]`` with the
  half-integer zero point ``(2**b - 1) / 2``; 0.0 falls between two levels.
* ``b == 1``, any scheme: the binary code ``{-a, +a}`` per channel (zero point
  1/2). ``a = mean|w|`` (the least-squares optimum for a sign code) by default
  and always under ``mse`` clipping; ``a = max|w|`` under ``minmax`` clipping
  with ``binary_scale="max"`` (the range-preserving choice, which leaves nearly
  every weight far from its level: a ResNet18 with its largest layers at 1 bit
  loses far more accuracy with it, see ``docs/algorithm.md``). An affine
  1-bit grid would be ``{0, max}``, wasting half the code on a level most
  weights are far from.

A channel whose grid would be empty (all weights zero) gets a tiny positive
scale instead, so no scale is zero, NaN or inf and all-zero weights dequantize
to (nearly) zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fxquant.core.config import QuantConfig

__all__ = [
    "QuantizedWeight",
    "compute_qparams",
    "quantize",
    "dequantize",
    "quantize_weight",
    "fake_quantize",
]

# A zero-width channel gets this scale: positive and finite, and so small that
# its +-scale/2 levels are indistinguishable from 0 next to any real weight.
_TINY_SCALE = 1e-30


@dataclass(frozen=True)
class QuantizedWeight:
    """Integer codes of one weight tensor plus the per-channel grid that decodes them."""

    codes: torch.Tensor  # uint8, same shape as the float weight
    scale: torch.Tensor  # float32, [C] per channel or [1] per tensor
    zero_point: torch.Tensor  # float32, same shape as scale
    bits: int

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.zero_point)


def _check_weight(weight: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point weight tensor, got {type(weight).__name__}")
    if weight.dim() == 0:
        raise ValueError(f"{name}: cannot quantize a 0-d tensor")
    if not torch.isfinite(weight).all():
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(f"{name}: weight contains {bad} NaN/inf value(s); cannot quantize it")
    return weight.detach().to(torch.float32)


def _rows(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    if not per_channel:
        return weight.reshape(1, -1)
    return weight.reshape(weight.shape[0], weight[0].numel() if weight.shape[0] else 0)


def _broadcast(param: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Shape a [C] or [1] parameter so it broadcasts against ``like`` along dim 0."""
    return param.reshape(-1, *([1] * (like.dim() - 1)))


def _grid_for_ratio(rows: torch.Tensor, bits: int, scheme: str, ratio, binary_mean: bool):
    """Scale and zero point per row for clipping ``ratio`` (a float or a [C] tensor)."""
    levels = (1 << bits) - 1
    if bits == 1:
        amp = rows.abs().mean(dim=1) if binary_mean else rows.abs().amax(dim=1)
        scale = 2.0 * amp * ratio
        zero_point = torch.full_like(scale, 0.5)
    elif scheme == "symmetric":
        scale = 2.0 * rows.abs().amax(dim=1) * ratio / levels
        zero_point = torch.full_like(scale, levels / 2.0)
    else:
        lo = rows.amin(dim=1).clamp(max=0.0) * ratio
        hi = rows.amax(dim=1).clamp(min=0.0) * ratio
        scale = (hi - lo) / levels
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = torch.round(-lo / safe).clamp(0, levels)
    scale = torch.where(scale > 0, scale, torch.full_like(scale, _TINY_SCALE))
    return scale, zero_point


def compute_qparams(weight: torch.Tensor, config: QuantConfig, name: str = "weight"):
    """Scale and zero point (float32, shape [C] or [1]) for ``weight`` under ``config``.

    ``name`` is used in error messages (pass the layer's name).
    """
    w = _check_weight(weight, name)
    rows = _rows(w, config.per_channel)
    if rows.shape[1] == 0:
        ones = torch.ones(rows.shape[0], device=rows.device)
        return ones, torch.zeros_like(ones)
    if config.clipping == "minmax":
        return _grid_for_ratio(rows, config.bits, config.scheme, 1.0,
                               binary_mean=config.binary_scale == "mean")
    if config.bits == 1:
        return _grid_for_ratio(rows, 1, config.scheme, 1.0, binary_mean=True)
    # Weight-MSE clipping: try each ratio for all channels at once, keep the best per channel.
    best_err = torch.full((rows.shape[0],), float("inf"), device=rows.device)
    best_scale = best_zp = None
    for ratio in torch.linspace(config.mse_min_ratio, 1.0, config.mse_grid).tolist():
        scale, zp = _grid_for_ratio(rows, config.bits, config.scheme, ratio, binary_mean=False)
        codes = quantize(rows, scale, zp, config.bits)
        err = (dequantize(codes, scale, zp) - rows).pow(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = scale if best_scale is None else torch.where(better, scale, best_scale)
        best_zp = zp if best_zp is None else torch.where(better, zp, best_zp)
    return best_scale, best_zp


def quantize(weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes (uint8, same shape as ``weight``) on the grid ``scale * (q - zero_point)``."""
    w = weight.to(torch.float32)
    q = torch.round(w / _broadcast(scale, w) + _broadcast(zero_point, w))
    return q.clamp_(0, (1 << bits) - 1).to(torch.uint8)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Float32 weight ``scale * (codes - zero_point)``, broadcasting the grid along dim 0."""
    if codes.numel() == 0:
        return torch.zeros(codes.shape, dtype=torch.float32, device=codes.device)
    rows = codes.reshape(scale.numel(), -1).to(torch.float32, copy=True)
    # In place on a 2-D view: about 2x faster than broadcasting over an N-d weight.
    return rows.sub_(zero_point.reshape(-1, 1)).mul_(scale.reshape(-1, 1)).view(codes.shape)


def quantize_weight(weight: torch.Tensor, config: QuantConfig, name: str = "weight") -> QuantizedWeight:
    """Quantize ``weight`` under ``config``; ``name`` (the layer) is named in errors."""
    scale, zero_point = compute_qparams(weight, config, name)
    codes = quantize(weight.detach(), scale, zero_point, config.bits)
    return QuantizedWeight(codes=codes, scale=scale, zero_point=zero_point, bits=config.bits)


def fake_quantize(weight: torch.Tensor, config: QuantConfig, name: str = "weight") -> torch.Tensor:
    """``dequantize(quantize(weight))`` in float32: what the quantized layer will compute with."""
    return quantize_weight(weight, config, name).dequantize()
