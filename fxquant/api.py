"""Public entry points that run the FX passes: ``compress``, ``quantize``, ``quantizable_layers``."""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Callable, Collection, Iterable

from torch import fx, nn

from fxquant import passes
from fxquant.core.calibration import calibration_inputs
from fxquant.engine import distributed as fxdist
from fxquant.core.config import QuantConfig
from fxquant.nn.modules import quant_module_for
from fxquant.engine.oracle import AccuracyOracle
from fxquant.passes.calibrate import sequential_quantize
from fxquant.passes.search import layer_quantizer, search_bits
from fxquant.schema import SearchConfig

__all__ = ["compress", "quantize", "quantizable_layers", "FilterFn"]

FilterFn = Callable[[nn.Module, str], bool]

log = logging.getLogger("fxquant.api")


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
             calib_loader: Iterable | None = None, filter_fn: FilterFn | None = None,
             leaf_modules: Iterable[str] = (), mapping: dict[type, type] | None = None) -> fx.GraphModule:
    """Quantize ``model``'s weights to fixed bit-widths; returns a new GraphModule.

    Args:
        model: any ``nn.Module`` (put it in ``eval()`` mode first: tracing
            records the current mode's control flow). It is never modified.
        bits: one width for every layer, or ``{layer_name: bits}`` (layers not
            named, or mapped to ``None``, stay float). Names come from
            :func:`quantizable_layers`.
        config: quantizer settings (granularity, scheme, clipping, rounding,
            bias correction); its ``bits`` is overridden per layer.
        calib_loader: iterable of input batches (or ``(inputs, targets)``; the
            targets are unused). With it, and by default (``QuantConfig(rounding=
            "auto", bias_correction=True)``), layers are quantized in execution
            order with GPTQ rounding and bias correction measured on these inputs
            (at most ``config.calib_samples`` samples). Without it: nearest rounding.
        filter_fn: ``filter_fn(module, layer_name) -> bool``; layers for which it
            returns False stay float.
        leaf_modules: submodules to keep whole when tracing (see ``fxquant.passes.trace``).
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
    if config is not None and not isinstance(config, QuantConfig):
        raise ValueError(f"config must be a QuantConfig, got {type(config).__name__}")
    cfg = (config or QuantConfig()).data_aware(calib_loader is not None)
    given = None
    if cfg.needs_data:
        inputs = calibration_inputs(calib_loader, cfg.calib_samples)
        given = sequential_quantize(gm, widths, cfg, inputs, layers=layers)
    return passes.rewrite(gm, widths, config=cfg, mapping=mapping, layers=layers, quantized=given)


def _check_mapping(gm: fx.GraphModule, layers: list[passes.Layer], mapping) -> None:
    """Fail before a long search, not after it, when a layer has no quantized module."""
    for layer in layers:
        if layer.how != "module":
            continue
        for path in (layer.param_path, *layer.tied):
            owner = gm.get_submodule(path.rpartition(".")[0])
            if quant_module_for(owner, mapping) is None:
                raise ValueError(f"layer {layer.name}: no quantized module for {type(owner).__name__} "
                                 f"({path}) in the mapping")


def _ensure_progress_output() -> None:
    """Show the search's per-layer progress lines when the application configured no logging."""
    logger = logging.getLogger("fxquant")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def _search_config(config: SearchConfig | None, options: dict) -> SearchConfig:
    if config is not None and not isinstance(config, SearchConfig):
        raise ValueError(f"config must be a SearchConfig, got {type(config).__name__}")
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown compress option(s) {unknown}; options are {sorted(known)}")
    return dataclasses.replace(config or SearchConfig(), **options)


def compress(model: nn.Module, calib_loader: Iterable | None = None, *, oracle: Callable | None = None,
             stats_loader: Iterable | None = None, config: SearchConfig | None = None,
             filter_fn: FilterFn | None = None, keep_8bit: FilterFn | Collection[str] | None = None, leaf_modules: Iterable[str] = (),
             mapping: dict[type, type] | None = None, verbose: bool = True, distributed: bool | None = None,
             **options) -> fx.GraphModule:
    """Trace, annotate, search bit-widths and rewrite ``model``; returns the compressed GraphModule.

    Args:
        model: the float classifier (never modified; compressed in eval mode).
        calib_loader: iterable of ``(inputs, targets)`` batches for the default
            top-1 accuracy oracle. Keep it apart from your test data.
        oracle: instead, any ``oracle(model) -> float`` (higher is better).
        stats_loader: input batches (targets unused) for the data-aware
            quantizer's statistics; default: ``calib_loader``'s inputs. Prefer
            images the oracle does not score: statistics from the scored images
            let the search accept widths (1 bit in late layers) whose rounding
            fits those images but does not generalise.
        config: a :class:`~fxquant.passes.search.SearchConfig`; ``**options`` override
            its fields (``margin="fixed"``, ``t_init=0.5``, ``candidates=(2, 4, 8)``,
            ``strategy="bisect"``, ``evaluation="naive"``, ``quant=QuantConfig(...)``, ...).
            By default each candidate width is quantized with GPTQ rounding and
            bias correction from ``calib_loader``'s inputs (statistics measured
            once on the float model); ``quant=QuantConfig(rounding="nearest",
            bias_correction=False)`` gives plain rounding.
            ``method="paper"`` is the paper's greedy; ``method="sensitivity"``
            measures each layer's sensitivity per width (mean KL of the logits
            against the float model) and allocates globally; ``"auto"`` (default)
            is ``"sensitivity"`` when a budget is given, else ``"paper"``.
            Budget mode: ``target_bits=B`` (eq. 5 average ``<= B``) or
            ``max_bytes=N`` (packed weights + scales + zero points ``<= N``) gives
            the most accurate allocation found within the budget; an infeasible
            budget raises ``ValueError`` naming the smallest feasible one.
        filter_fn: ``filter_fn(module, layer_name) -> bool``; False keeps a layer float.
        keep_8bit: a layer name, names, or a ``filter_fn``-style callable, for
            layers quantized at ``baseline_bits`` (8) without being searched.
        leaf_modules, mapping: as for :func:`quantize`.
        verbose: log one progress line per layer (logger ``fxquant.search``).
        distributed: split the oracle's calibration batches over the
            ``torch.distributed`` processes (every rank passes the same model and
            data and gets the same result; only rank 0 logs). ``None``: whenever a
            process group is initialised (e.g. under ``torchrun``).

    ``fxquant.report(result)`` gives the :class:`~fxquant.reporting.report.CompressionReport`.
    """
    cfg = _search_config(config, options)
    comm = fxdist.resolve(distributed)
    if oracle is None:
        oracle = AccuracyOracle(calib_loader)
    elif not callable(oracle):
        raise ValueError(f"oracle must be callable(model) -> float, got {type(oracle).__name__}")
    if verbose and (comm is None or comm.is_main):  # the other ranks keep the application's logging
        _ensure_progress_output()
    work = copy.deepcopy(model).eval()
    gm = passes.trace(work, leaf_modules=leaf_modules, copy_model=False)
    layers = passes.find_layers(gm)
    passes.annotate_importance(gm, w_p=cfg.w_p, w_v=cfg.w_v, layers=layers)
    chosen = select_layers(gm, layers, filter_fn)
    _check_mapping(gm, chosen, mapping)
    if keep_8bit is None:
        keep = set()
    elif callable(keep_8bit):
        keep = {lay.name for lay in select_layers(gm, chosen, keep_8bit)}
    else:
        keep = {keep_8bit} if isinstance(keep_8bit, str) else set(keep_8bit)
        unknown = sorted(keep - {lay.name for lay in layers})
        if unknown:
            raise ValueError(f"keep_8bit names no layer of the model: {unknown[:5]}")
        excluded = sorted(keep - {lay.name for lay in chosen})
        if excluded:
            raise ValueError(f"keep_8bit names layers that filter_fn keeps float: {excluded[:5]}")
    calib_inputs = None
    if stats_loader is not None:
        calib_inputs = calibration_inputs(stats_loader, cfg.quant.calib_samples, "stats_loader")
    elif calib_loader is not None and not isinstance(oracle, AccuracyOracle):
        calib_inputs = calibration_inputs(calib_loader, cfg.quant.calib_samples)
    quantizer = layer_quantizer(gm, chosen, cfg, oracle, calib_inputs)
    if quantizer.config.rounding == "gptq" and stats_loader is None and isinstance(oracle, AccuracyOracle):
        log.warning("fxquant: GPTQ statistics come from the images the search scores; pass stats_loader= "
                    "(other images, e.g. the rest of the training split) so the search cannot trust "
                    "widths that only fit the calibration images")
    sens_inputs = None  # the sensitivity method measures on the scored images (the oracle's, by default)
    if cfg.resolved_method == "sensitivity" and not isinstance(oracle, AccuracyOracle):
        source = calib_loader if calib_loader is not None else stats_loader
        if source is not None:
            # All of them: the subset is chosen by content (passes/sensitivity.py), not by position.
            sens_inputs = calibration_inputs(source, 1 << 62, "calib_loader")
    result = search_bits(gm, oracle, cfg, layers=chosen, keep_8bit=keep, verbose=verbose, comm=comm,
                         quantizer=quantizer, sensitivity_inputs=sens_inputs)
    passes.rewrite(gm, result.bits, config=result.config.quant, mapping=mapping, layers=layers,
                   quantized=quantizer.chosen(result.bits))
    gm.meta["fxquant"] = result
    return gm
