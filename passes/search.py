"""Search pass: per-layer bit-widths against an accuracy oracle (the paper's section 2.2).

Baseline: the oracle value of the model with every searched layer at 8 bits.
Layers are visited in descending importance (ties: execution order); each gets
the lowest candidate width whose oracle value is ``>= baseline - T_margin(l)``,
with the layers already decided kept at their widths and the rest at 8 bits.
If no candidate passes, the layer keeps the widest candidate.

``T_margin(l)`` is ``T_init`` (``margin="fixed"``) or ``T_init * Importance(l)``
(``margin="adaptive"``, eq. 4). The paper does not say whether Importance is
rescaled first; ``importance_scale="none"`` (default) applies eq. 4 literally,
``"max"`` divides by the largest importance so the most important layer gets
the full ``T_init``. The first and last layer in execution order get
``edge_factor`` (default half) of their margin.

Strategies: ``"sequential"`` tries widths from the lowest up (the paper);
``"bisect"`` binary-searches them (fewer oracle calls; assumes accuracy does not
drop when a layer gets more bits).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import torch
from torch import fx

from fxquant.core.calibration import calibration_inputs
from fxquant.core.config import QuantConfig
from fxquant.engine.oracle import AccuracyOracle
from fxquant.passes.calibrate import LayerQuantizer
from fxquant.engine.distributed import Comm
from fxquant.passes.importance import annotate_importance, layer_infos, update_layer_infos
from fxquant.passes.layers import find_layers
from fxquant.passes.sensitivity_search import open_evaluator, search_sensitivity
from fxquant.schema import Layer, LayerDecision, SearchConfig, SearchResult

__all__ = ["SearchConfig", "LayerDecision", "SearchResult", "search_bits"]

log = logging.getLogger("fxquant.search")

def layer_quantizer(gm: fx.GraphModule, layers: list[Layer], cfg: SearchConfig, oracle,
                    calib_inputs: list[torch.Tensor] | None = None) -> LayerQuantizer:
    """The search's candidate quantizer: data-aware when calibration inputs are at hand.

    They are ``calib_inputs`` or else the default oracle's batches (labels unused).
    """
    if calib_inputs is None and isinstance(oracle, AccuracyOracle):
        calib_inputs = [x for x, _ in oracle.batches]
    quant = cfg.quant.data_aware(calib_inputs is not None)
    inputs = calibration_inputs(calib_inputs, quant.calib_samples, "calibration inputs") \
        if quant.needs_data else None
    return LayerQuantizer(gm, layers, quant, inputs)


def _margin(cfg: SearchConfig, importance: float, max_importance: float, edge: bool) -> float:
    if cfg.margin == "fixed":
        margin = cfg.t_init
    else:
        scale = max_importance if cfg.importance_scale == "max" and max_importance > 0 else 1.0
        margin = cfg.t_init * importance / scale
    return margin * (cfg.edge_factor if edge else 1.0)


def search_bits(gm: fx.GraphModule, oracle, config: SearchConfig | None = None, *,
                layers: list[Layer] | None = None, keep_8bit: set[str] = frozenset(),
                verbose: bool = True, comm: Comm | None = None,
                quantizer: LayerQuantizer | None = None,
                sensitivity_inputs: list[torch.Tensor] | None = None) -> SearchResult:
    """Search bit-widths for ``gm``'s layers; annotates ``node.meta`` in place.

    The float weights (and biases) are changed while candidates are evaluated
    and restored before returning; the graph is not changed (``fxquant.passes.rewrite``
    applies the result). ``layers`` (default: all) are quantized; those named in
    ``keep_8bit`` stay at ``baseline_bits`` without being searched.
    ``quantizer`` (default: :func:`layer_quantizer`) makes each candidate; pass
    the same one to ``rewrite`` (``quantized=quantizer.chosen(result.bits)``)
    so the model built is the model measured. With ``comm``
    (:mod:`fxquant.engine.distributed`), every rank must call this with the same model,
    data and settings: each scores its share of the calibration batches, all
    return the same result, and only rank 0 logs progress.

    ``config.method`` picks the algorithm: ``"paper"`` is the greedy above;
    ``"sensitivity"`` (and ``"auto"``) is
    :func:`fxquant.passes.sensitivity_search.search_sensitivity`, measuring
    sensitivities on ``sensitivity_inputs`` (default: the accuracy oracle's inputs).
    ``"auto"`` without a budget, with a custom oracle and no ``sensitivity_inputs``
    has nothing to measure on and runs the paper's greedy (logged; the result's
    ``config.method`` says which ran).
    """
    cfg = config or SearchConfig()
    t0 = time.perf_counter()
    all_layers = find_layers(gm)
    layers = all_layers if layers is None else layers
    if not layers:
        raise ValueError("no layers to search: the filter excluded every layer")
    infos = {i.name: i for i in (layer_infos(gm) or annotate_importance(gm, w_p=cfg.w_p, w_v=cfg.w_v))}
    if quantizer is None:
        quantizer = layer_quantizer(gm, layers, cfg, oracle)
    else:
        t0 -= quantizer.setup_seconds  # its statistics are part of the search's cost
    set_bits = quantizer.apply
    method = cfg.resolved_method
    if cfg.method == "auto" and not cfg.budgeted and sensitivity_inputs is None \
            and not isinstance(oracle, AccuracyOracle):
        log.info("fxquant search: method='auto' with a custom oracle and no calibration inputs: the paper's "
                 "greedy (pass calib_loader= for the sensitivity search)")
        method = "paper"
    if method == "sensitivity":
        return search_sensitivity(gm, oracle, dataclasses.replace(cfg, method="sensitivity"),
                                  all_layers=all_layers, layers=layers, keep_8bit=keep_8bit,
                                  quantizer=quantizer, inputs=sensitivity_inputs, verbose=verbose,
                                  comm=comm, t0=t0)

    probe = oracle.batches[0][0] if isinstance(oracle, AccuracyOracle) else \
        (sensitivity_inputs[0] if sensitivity_inputs else None)
    evaluator, undo_layout = open_evaluator(gm, oracle, layers, cfg, comm, probe)
    emit = log.info if verbose and (comm is None or comm.is_main) else log.debug
    try:
        # By the float model's margins, before any value is measured; that pass also scores the float model.
        float_value = evaluator.order_hardest_first() if cfg.hardest_first else None
        if float_value is None:
            float_value, _ = evaluator.evaluate()
        for layer in layers:
            set_bits(layer, cfg.baseline_bits)
        baseline, _ = evaluator.evaluate()
        emit("fxquant search: float %.3f, all-%d-bit baseline %.3f over %d layers (%s evaluation)",
             float_value, cfg.baseline_bits, baseline, len(layers), "fast" if evaluator.fast else "naive")
        searched = [lay for lay in layers if lay.name not in keep_8bit]
        order = sorted(searched, key=lambda lay: (-infos[lay.name].importance, lay.order))
        edges = {all_layers[0].name, all_layers[-1].name}
        max_imp = max((infos[lay.name].importance for lay in searched), default=0.0)
        evaluator.plan(order)
        decisions = []
        for step, layer in enumerate(order, 1):
            decisions.append(_decide(layer, infos[layer.name].importance, cfg, baseline,
                                     _margin(cfg, infos[layer.name].importance, max_imp, layer.name in edges),
                                     evaluator, set_bits))
            evaluator.commit(layer)
            d = decisions[-1]
            emit("[%d/%d] %s importance=%.4f margin=%.4f tried %s -> %d bits (%.3f)", step, len(order),
                 layer.name, d.importance, d.margin,
                 " ".join(f"{b}:{v:.2f}{'' if full else '<'}" for b, v, full in d.tried), d.bits, d.accuracy)
        final_value, _ = evaluator.evaluate()
    finally:
        evaluator.release()
        quantizer.restore()
        undo_layout()
    bits = {lay.name: cfg.baseline_bits for lay in layers}
    bits.update({d.name: d.bits for d in decisions})
    changes = {name: {"bits": b} for name, b in bits.items()}
    for d in decisions:
        changes[d.name].update(margin=d.margin, accuracy=d.accuracy,
                               candidates_tried=tuple(b for b, _, _ in d.tried))
    update_layer_infos(gm, changes)
    result = SearchResult(bits=bits, decisions=tuple(decisions), float_value=float_value,
                          baseline_value=baseline, final_value=final_value, oracle_calls=evaluator.calls,
                          layer_forwards=evaluator.total_layer_forwards(), seconds=time.perf_counter() - t0,
                          evaluation="fast" if evaluator.fast else "naive",
                          config=dataclasses.replace(cfg, quant=quantizer.config, method="paper"))
    emit("fxquant search: final %.3f (baseline %.3f), %d oracle calls, %d layer-forwards, %.1f s",
         final_value, baseline, result.oracle_calls, result.layer_forwards, result.seconds)
    return result


def _decide(layer, importance, cfg, baseline, margin, evaluator, set_bits) -> LayerDecision:
    threshold = baseline - margin
    evaluator.focus(layer)
    tried: list[tuple[int, float, bool]] = []

    def passes(bits: int) -> bool:
        set_bits(layer, bits)
        value, complete = evaluator.evaluate_focused(threshold)
        tried.append((bits, value, complete))
        return complete and value >= threshold

    cands = cfg.candidates
    chosen = None
    if cfg.strategy == "sequential":
        chosen = next((b for b in cands if passes(b)), None)
    else:
        lo, hi = 0, len(cands) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            if passes(cands[mid]):
                chosen, hi = cands[mid], mid - 1
            else:
                lo = mid + 1
    chosen = cands[-1] if chosen is None else chosen
    set_bits(layer, chosen)
    exact = [v for b, v, complete in tried if b == chosen and complete]
    accuracy = exact[-1] if exact else evaluator.evaluate_focused()[0]
    return LayerDecision(name=layer.name, importance=importance, margin=margin, threshold=threshold,
                         tried=tuple(tried), bits=chosen, accuracy=accuracy)
