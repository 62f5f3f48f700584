"""Public entry points that run the FX passes: ``quantize`` and ``quantizable_layers``."""

from __future__ import annotations

from typing import Callable, Iterable

from torch import fx, nn

import passes
from fxquant.config import QuantConfig

__all__ = ["quantize", "quantizable_layers", "FilterFn"]

FilterFn = Callable[[nn.Module, str], bool]


def _owner_module(gm: fx.GraphModule, layer: passes.Layer) -> nn.Module:
    return gm.get_submodule(layer.module_path) if layer.module_path else gm


def select_layers(gm: fx.GraphModule, layers: list[passes.Layer], filter_fn: FilterFn | None):
    """The layers ``filter_fn(owner_module, layer_name)`` keeps (all when it is None)."""
    if filter_fn is None:
        return list(layers)
    if not callable(filter_fn):
        raise ValueError(f"filter_fn must be callable(module, name) -> bool, got {type(filter_fn).__name__}")
    return [lay for lay in layers if filter_fn(_owner_module(gm, lay), lay.name)]


def quantizable_layers(model: nn.Module, *, leaf_modules: Iterable[str] = ()) -> list[str]:
    """Stable names of ``model``'s quantizable layers, in execution order."""
    return [layer.name for layer in passes.find_layers(passes.trace(model, leaf_modules=leaf_modules))]


def quantize(model: nn.Module, bits: int | dict[str, int | None] = 4, *, config: QuantConfig | None = None,
             filter_fn: FilterFn | None = None, leaf_modules: Iterable[str] = (),
             mapping: dict[type, type] | None = None) -> fx.GraphModule:
    """Quantize ``model``'s weights to fixed bit-widths; returns a new GraphModule.

    Args:
        model: any ``nn.Module`` (put it in ``eval()`` mode first: tracing
            records the current mode's control flow). It is never modified.
        bits: one width for every layer, or ``{layer_name: bits}`` (layers not
            named, or mapped to ``None``, stay float). Names come from
            :func:`quantizable_layers`.
        config: quantizer settings (granularity, scheme, clipping); its ``bits``
            is overridden per layer.
        filter_fn: ``filter_fn(module, layer_name) -> bool``; layers for which it
            returns False stay float.
        leaf_modules: submodules to keep whole when tracing (see ``passes.trace``).
        mapping: float-module class -> quantized class (extends/replaces
            ``fxquant.DEFAULT_QUANT_MODULE_MAPPING``).
    """
    gm = passes.trace(model, leaf_modules=leaf_modules)
    layers = passes.find_layers(gm)
    passes.annotate_importance(gm, layers=layers)
    chosen = select_layers(gm, layers, filter_fn)
    if isinstance(bits, dict):
        widths = passes.validate_bits(bits, layers)
        keep = {lay.name for lay in chosen}
        widths = {name: b for name, b in widths.items() if name in keep}
    elif isinstance(bits, int) and not isinstance(bits, bool):
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        widths = {lay.name: bits for lay in chosen}
    else:
        raise ValueError(f"bits must be an int or a dict {{layer_name: bits}}, got {type(bits).__name__}")
    return passes.rewrite(gm, widths, config=config, mapping=mapping, layers=layers)
