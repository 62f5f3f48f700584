"""Public entry points that run the FX passes: ``compress``, ``quantize``, ``quantizable_layers``."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
from typing import Callable, Collection, Iterable

import torch
from torch import fx, nn

from fxquant import passes
from fxquant.core.calibration import calibration_inputs, check_inputs
from fxquant.engine import distributed as fxdist
from fxquant.core.config import QuantConfig, check_bits
from fxquant.nn.modules import quant_module_for
from fxquant.engine.oracle import AccuracyOracle
from fxquant.logs import ensure_progress_output
from fxquant.passes.calibrate import sequential_quantize
from fxquant.passes.reparam import copy_model
from fxquant.passes.search import layer_quantizer, search_bits
from fxquant.schema import SearchConfig

__all__ = ["compress", "quantize", "quantizable_layers", "FilterFn"]

FilterFn = Callable[[nn.Module, str], bool]

log = logging.getLogger("fxquant.api")


_STAT_SUFFIXES = ("running_mean", "running_var")


def check_model(model, who: str) -> torch.dtype | None:
    """Refuse a model fxquant cannot quantize, naming the tensor at fault; returns its float dtype.

    Not an ``nn.Module``: TypeError. Tensors on the ``meta`` device (no values),
    NaN anywhere, or inf in a parameter or a norm statistic: ValueError (a NaN
    running variance would otherwise give a NaN bias or a singular GPTQ matrix).
    Buffers such as attention masks may hold ±inf.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who}: model must be an nn.Module, got {type(model).__name__}")
    dtype = None
    named = [(n, t, True) for n, t in model.named_parameters()] + \
            [(n, t, n.endswith(_STAT_SUFFIXES)) for n, t in model.named_buffers()]
    for name, tensor, must_be_finite in named:
        if tensor.device.type == "meta":
            raise ValueError(f"{who}: model tensor {name!r} is on the meta device (it holds no values); "
                             "materialise the model and load its weights first (model.to_empty(device='cpu') "
                             "then load_state_dict)")
        if not tensor.is_floating_point() or not tensor.numel():
            continue
        dtype = dtype or (tensor.dtype if must_be_finite else None)
        bad = torch.isnan(tensor).any() if not must_be_finite else ~torch.isfinite(tensor).all()
        if bool(bad):
            raise ValueError(f"{who}: model tensor {name!r} holds NaN or infinite values; fix or retrain the "
                             "model first (its outputs would be NaN)")
    return dtype


def select_layers(gm: fx.GraphModule, layers: list[passes.Layer], filter_fn: FilterFn | None):
    """The layers ``filter_fn(owner_module, layer_name)`` keeps (all when it is None)."""
    if filter_fn is None:
        return list(layers)
    if not callable(filter_fn):
        raise ValueError(f"filter_fn must be callable(module, name) -> bool, got {type(filter_fn).__name__}")
    return [lay for lay in layers if filter_fn(gm.get_submodule(lay.module_path), lay.name)]


def warn_float_weights(gm: fx.GraphModule) -> None:
    """Log a warning naming the conv/linear/attention weights no layer covers (they stay float32).

    Counted independently of the layer finder (:func:`fxquant.passes.weight_coverage`); the
    layers the caller kept float (``filter_fn``, ``bits`` dict) are reported, not warned about.
    """
    cov = passes.weight_coverage(gm)
    if cov.missed:
        names = list(cov.missed)
        missed = sum(cov.missed.values()) / max(1, cov.packed_params + cov.float_params)
        log.warning("fxquant: %d conv/linear/attention weight tensor(s) (%.1f%% of the weight elements) are "
                    "not quantizable layers and stay float32: %s%s (see fxquant.report(...).float_weights)",
                    len(names), 100 * missed, ", ".join(names[:8]), ", ..." if len(names) > 8 else "")


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
            Calibration always runs in eval mode (as in :func:`compress`): BatchNorm
            uses its running statistics and does not update them, dropout is off.
            A model given in training mode is logged as such; the result keeps
            the given model's train/eval modes.
        filter_fn: ``filter_fn(module, layer_name) -> bool``; layers for which it
            returns False stay float. A ``bits`` dict naming such a layer (with a
            width, not ``None``) is a ``ValueError``, as ``compress(keep_8bit=...)``.
        leaf_modules: submodules to keep whole when tracing (see ``fxquant.passes.trace``).
        mapping: float-module class -> quantized class (extends/replaces
            ``fxquant.DEFAULT_QUANT_MODULE_MAPPING``).

    Conv/linear/attention weights that are no quantizable layer (e.g. inside an
    untraced submodule with its own ``forward``) stay float32: a warning on the
    ``fxquant.api`` logger names them, and ``fxquant.report(result).float_weights``
    lists every weight left float.
    """
    dtype = check_model(model, "fxquant.quantize")
    gm = passes.trace(model, leaf_modules=leaf_modules)
    layers = passes.find_layers(gm)
    passes.annotate_importance(gm, layers=layers)
    chosen = select_layers(gm, layers, filter_fn)
    if isinstance(bits, dict):
        widths = passes.validate_bits(bits, layers)
        excluded = sorted(set(widths) - {lay.name for lay in chosen})
        if excluded:  # as compress(keep_8bit=...): a width for a layer the filter keeps float is a mistake
            raise ValueError(f"bits names layers that filter_fn keeps float: {excluded[:5]}")
    elif isinstance(bits, int) and not isinstance(bits, bool):
        check_bits(bits, "bits")
        widths = {lay.name: bits for lay in chosen}
    else:
        raise ValueError(f"bits must be an int or a dict {{layer_name: bits}}, got {type(bits).__name__}")
    if config is not None and not isinstance(config, QuantConfig):
        raise ValueError(f"config must be a QuantConfig, got {type(config).__name__}")
    cfg = (config or QuantConfig()).data_aware(calib_loader is not None)
    given = None
    if cfg.needs_data:
        inputs = calibration_inputs(calib_loader, cfg.calib_samples)
        check_inputs(inputs, "calib_loader", dtype)
        given = _in_eval_mode(gm, lambda: sequential_quantize(gm, widths, cfg, inputs, layers=layers))
    passes.rewrite(gm, widths, config=cfg, mapping=mapping, layers=layers, quantized=given)
    warn_float_weights(gm)
    return gm


def _in_eval_mode(gm: fx.GraphModule, run: Callable):
    """``run()`` with every submodule of ``gm`` in eval mode, their modes restored afterwards.

    Calibrating in training mode would update BatchNorm's running statistics
    on the calibration batches (and normalise with batch statistics), so the
    returned model would drift from the caller's.
    """
    modes = {name: m.training for name, m in gm.named_modules()}
    if any(modes.values()):
        log.warning("fxquant.quantize: the model is in training mode; calibration runs in eval mode "
                    "(BatchNorm keeps its running statistics) and the result keeps the training mode")
    gm.eval()
    try:
        return run()
    finally:
        for name, module in gm.named_modules():
            module.training = modes.get(name, False)


@contextlib.contextmanager
def _logs_on_main_rank(comm):
    """Only rank 0 logs: the other ranks' fxquant loggers keep errors only while the search runs."""
    if comm is None or comm.is_main:
        yield
        return
    logger = logging.getLogger("fxquant")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_mapping(gm: fx.GraphModule, layers: list[passes.Layer], mapping) -> None:
    """Fail before a long search, not after it, when a layer has no usable quantized module.

    ``rewrite`` calls ``qcls.from_float(module, bits, config, name=..., qweight=...)``:
    a mapped class must accept that call.
    """
    checked = set()
    for layer in layers:
        if layer.how != "module":
            continue
        for path in (layer.param_path, *layer.tied):
            owner = gm.get_submodule(path.rpartition(".")[0])
            qcls = quant_module_for(owner, mapping)
            if qcls is None:
                raise ValueError(f"layer {layer.name}: no quantized module for {type(owner).__name__} "
                                 f"({path}) in the mapping")
            if qcls not in checked:
                _check_from_float(qcls, layer.name, owner)
                checked.add(qcls)


def _check_from_float(qcls, layer_name: str, owner: nn.Module) -> None:
    from_float = getattr(qcls, "from_float", None)
    if not callable(from_float):
        raise ValueError(f"layer {layer_name}: the mapping's {getattr(qcls, '__name__', qcls)!r} for "
                         f"{type(owner).__name__} has no from_float(module, bits, config, name, qweight=...)")
    try:
        inspect.signature(from_float).bind(owner, 8, None, name=layer_name, qweight=None)
    except TypeError as e:
        raise ValueError(f"layer {layer_name}: {qcls.__name__}.from_float cannot be called as "
                         f"from_float(module, bits, config, name=..., qweight=...) ({e})") from e
    except ValueError:
        pass  # no introspectable signature (e.g. a builtin): the call itself will tell


def search_config(config: SearchConfig | None, options: dict, who: str = "compress") -> SearchConfig:
    """``config`` (default ``SearchConfig()``) with ``options`` applied; errors name ``who``'s arguments."""
    if config is not None and not isinstance(config, SearchConfig):
        raise ValueError(f"{who}: config must be a SearchConfig, got {type(config).__name__}")
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown {who} option(s) {unknown}; options are {sorted(known)}")
    return dataclasses.replace(config or SearchConfig(), **options)


def make_oracle(calib_loader: Iterable | None, oracle: Callable | None, dtype) -> Callable:
    if oracle is None:
        oracle = AccuracyOracle(calib_loader)
        check_inputs([x for x, _ in oracle.batches], "calib_loader", dtype)
    elif not callable(oracle):
        raise ValueError(f"oracle must be callable(model) -> float, got {type(oracle).__name__}")
    return oracle


@dataclasses.dataclass(frozen=True)
class PreparedSearch:
    """A traced, annotated copy of the caller's model and what searching it needs (:func:`prepare_search`)."""

    gm: fx.GraphModule
    layers: list[passes.Layer]  # every layer of the graph
    chosen: list[passes.Layer]  # the ones filter_fn quantizes
    keep: set[str]  # kept at baseline_bits, not searched
    quantizer: object  # passes.calibrate.LayerQuantizer
    sensitivity_inputs: list[torch.Tensor] | None


def prepare_search(model: nn.Module, cfg: SearchConfig, oracle: Callable, *, calib_loader, stats_loader,
                   filter_fn: FilterFn | None, keep_8bit, leaf_modules: Iterable[str], mapping, dtype) -> PreparedSearch:
    """Copy, trace and annotate ``model``, validate the layer options, measure the quantizer's statistics."""
    work = copy_model(model).eval()
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
        check_inputs(calib_inputs, "stats_loader", dtype)
    elif calib_loader is not None and not isinstance(oracle, AccuracyOracle):
        calib_inputs = calibration_inputs(calib_loader, cfg.quant.calib_samples)
        check_inputs(calib_inputs, "calib_loader", dtype)
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
    return PreparedSearch(gm=gm, layers=layers, chosen=chosen, keep=keep, quantizer=quantizer,
                          sensitivity_inputs=sens_inputs)


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
            ``method="sensitivity"`` (and ``"auto"``, the default) measures each
            layer's sensitivity per width (mean KL of the logits against the
            float model) and allocates globally: without a budget, the smallest
            model whose calibration accuracy drop stays within ``t_init`` with a
            statistical margin. ``method="paper"`` is the paper's greedy (eq. 4
            margins; ``margin``, ``importance_scale``, ``edge_factor`` and
            ``strategy`` steer only it); ``"auto"`` runs it for a custom oracle
            given without ``calib_loader`` or ``stats_loader`` and no budget.
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
            process group is initialised or the script runs under ``torchrun``
            (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set): without a group,
            fxquant initialises one (gloo on CPU, nccl for a model on CUDA) and
            destroys it before returning; a group you initialised is left alone.
            ``True`` without either is a ``ValueError``. Write files on one rank
            only: ``fxquant.engine.distributed.is_main_process()``.

    ``fxquant.report(result)`` gives the :class:`~fxquant.reporting.report.CompressionReport`.
    """
    dtype = check_model(model, "fxquant.compress")
    cfg = search_config(config, options)
    fxdist.check_request(distributed)
    oracle = make_oracle(calib_loader, oracle, dtype)
    on_cuda = any(t.is_cuda for t in (*model.parameters(), *model.buffers()))
    with fxdist.session(distributed, cuda=on_cuda) as comm, _logs_on_main_rank(comm):
        # under torchrun: starts (and ends) its own process group; the other ranks stay quiet
        if verbose and (comm is None or comm.is_main):
            ensure_progress_output()
        prep = prepare_search(model, cfg, oracle, calib_loader=calib_loader, stats_loader=stats_loader,
                              filter_fn=filter_fn, keep_8bit=keep_8bit, leaf_modules=leaf_modules,
                              mapping=mapping, dtype=dtype)
        gm, layers, quantizer = prep.gm, prep.layers, prep.quantizer
        result = search_bits(gm, oracle, cfg, layers=prep.chosen, keep_8bit=prep.keep, verbose=verbose, comm=comm,
                             quantizer=quantizer, sensitivity_inputs=prep.sensitivity_inputs)
    passes.rewrite(gm, result.bits, config=result.config.quant, mapping=mapping, layers=layers,
                   quantized=quantizer.chosen(result.bits))
    gm.meta["fxquant"] = result
    warn_float_weights(gm)
    return gm
