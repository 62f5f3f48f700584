"""How many bytes a (partly) quantized model's weights take."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fxquant.core.importance import average_bits
from fxquant.nn.modules import is_quantized_module

__all__ = ["WeightStorage", "weight_storage", "state_dict_bytes"]


@dataclass(frozen=True)
class WeightStorage:
    """Packed-weight accounting of a model; tied weights are counted once."""

    packed_params: int  # weights held as packed integer codes
    packed_bytes: int  # their integer bytes
    grid_bytes: int  # per-channel scales and zero points (float32)
    bit_params: int  # sum of params * bits over packed weights
    widths: tuple[tuple[int, int], ...] = ()  # (params, bits) of each packed weight

    @property
    def float32_bytes(self) -> int:
        """What the packed weights would take as float32."""
        return 4 * self.packed_params

    @property
    def average_bits(self) -> float:
        """Eq. 5 over the packed weights (float layers not counted); 0.0 when nothing is packed."""
        if not self.widths:
            return 0.0
        return average_bits([p for p, _ in self.widths], [b for _, b in self.widths])


def weight_storage(model: nn.Module) -> WeightStorage:
    """Sum the packed weights of every quantized module in ``model``."""
    seen: set[int] = set()
    params = nbytes = grid = bit_params = 0
    widths = []
    for module in model.modules():
        if not is_quantized_module(module):
            continue
        key = module.packed_weight.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        n = math.prod(module.weight_shape)
        params += n
        nbytes += module.packed_weight.numel()
        grid += 4 * (module.weight_scale.numel() + module.weight_zero_point.numel())
        bit_params += n * module.bits
        widths.append((n, module.bits))
    return WeightStorage(params, nbytes, grid, bit_params, tuple(widths))


def state_dict_bytes(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """Bytes of a state_dict by kind (``integer``, ``float``), each storage counted once."""
    seen: set[int] = set()
    out = {"integer": 0, "float": 0}
    for tensor in state_dict.values():
        if not isinstance(tensor, torch.Tensor):
            continue
        key = tensor.untyped_storage().data_ptr()
        if key in seen and tensor.numel():
            continue
        seen.add(key)
        kind = "float" if tensor.is_floating_point() or tensor.is_complex() else "integer"
        out[kind] += tensor.numel() * tensor.element_size()
    return out
