"""The sensitivity search: measured per-layer sensitivities, a global allocation, an oracle check.

Where the paper's greedy (:mod:`fxquant.passes.search`) decides one layer at a
time on top-1 counts, so that single calibration images decide widths and every
decision steers the later ones, this search

1. measures every layer's sensitivity at every candidate width
   (:mod:`fxquant.passes.sensitivity`: mean KL of the logits, that layer alone
   quantized, over the calibration images);
2. builds the exact size/sensitivity Pareto frontier of all allocations
   (:func:`fxquant.core.allocate.pareto_frontier`; size = ``params * bits`` for
   ``target_bits`` and accuracy mode, packed + grid bytes for ``max_bytes``);
3. uses the oracle, on the whole calibration set, only to choose along that
   one-dimensional frontier:

   * budget mode (``target_bits`` / ``max_bytes``): the ``budget_checks``
     largest frontier points within the budget are evaluated and the best kept
     (the oracle sees the interactions the additive model misses);
   * accuracy mode: among frontier points about 0.05 average bits apart, the
     smallest whose *predicted* drop passes ``t_init`` with a statistical margin
     (drop plus ``accept_sigmas`` standard errors); the drop is predicted from the
     whole model's mean KL against float on all the calibration images, at a rate
     (points per nat) the oracle measures where drops are large enough to count,
     and the chosen point is then checked with the oracle
     (:mod:`fxquant.passes.accuracy_mode`), so single images do not place the cut.

Layers in ``keep_8bit`` are counted at ``baseline_bits``, layers left float at
32 bits (``target_bits``) or 0 bytes (``max_bytes`` counts packed storage only).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from fractions import Fraction
from typing import Callable

import torch
from torch import fx

from fxquant.core.allocate import Allocation, pareto_frontier
from fxquant.core.packing import packed_nbytes
from fxquant.engine.distributed import Comm
from fxquant.engine.evaluate import GraphEvaluator
from fxquant.engine.layout import use_channels_last
from fxquant.engine.oracle import AccuracyOracle
from fxquant.passes.accuracy_mode import choose_point
from fxquant.passes.calibrate import LayerQuantizer
from fxquant.passes.importance import update_layer_infos
from fxquant.passes.sensitivity import (BATCH, canonical_order, extrapolate, measure_sensitivity, model_kl,
                                        model_kl_and_correct, reference_logprobs)
from fxquant.schema import FrontierPoint, Layer, SearchConfig, SearchResult

__all__ = ["search_sensitivity", "measure", "allocate", "Measurement", "CHOICE_FIELDS", "budget_sizes",
           "check_budget", "frontier_point", "open_evaluator"]

log = logging.getLogger("fxquant.search")

FLOAT_BITS = 32  # eq. 5's count for a layer left float
WALK_STEP = 0.05  # average bits between the frontier points accuracy mode chooses among


def _grid_bytes(quantizer: LayerQuantizer, layer: Layer, bits: int) -> int:
    qw, _ = quantizer.quantized(layer, bits)
    return 4 * (qw.scale.numel() + qw.zero_point.numel())


def budget_sizes(cfg: SearchConfig, all_layers: list[Layer], searched: list[Layer], kept: list[Layer],
                 quantizer: LayerQuantizer) -> tuple[list[list[int]], int, int | None, str]:
    """``(sizes per searched layer and candidate, fixed size of the others, budget or None, unit)``."""
    cands = cfg.candidates
    if cfg.max_bytes is not None:
        sizes = [[packed_nbytes(lay.params, b) + _grid_bytes(quantizer, lay, cands[0]) for b in cands]
                 for lay in searched]
        fixed = sum(packed_nbytes(lay.params, cfg.baseline_bits) + _grid_bytes(quantizer, lay, cfg.baseline_bits)
                    for lay in kept)
        return sizes, fixed, cfg.max_bytes, "bytes"
    quantized = {lay.name for lay in searched} | {lay.name for lay in kept}
    fixed = sum(lay.params * cfg.baseline_bits for lay in kept) + \
        sum(lay.params * FLOAT_BITS for lay in all_layers if lay.name not in quantized)
    sizes = [[lay.params * b for b in cands] for lay in searched]
    budget = None
    if cfg.target_bits is not None:
        total = sum(lay.params for lay in all_layers)
        budget = math.floor(Fraction(cfg.target_bits) * total)  # eq. 5 average <= target_bits, exactly
    return sizes, fixed, budget, "bit-params"


def _infeasible(cfg: SearchConfig, smallest: int, total_params: int, n_kept: int, n_float: int) -> ValueError:
    counted = f"; {n_kept} layer(s) kept at {cfg.baseline_bits} bits" if n_kept else ""
    if cfg.max_bytes is not None:
        return ValueError(f"max_bytes={cfg.max_bytes} is infeasible: the smallest feasible budget is "
                          f"max_bytes={smallest} (every searched layer at {cfg.candidates[0]} bits{counted}; "
                          f"layers left float are not counted)")
    floats = f"; {n_float} float layer(s) counted at {FLOAT_BITS} bits" if n_float else ""
    return ValueError(f"target_bits={cfg.target_bits} is infeasible: the smallest feasible budget is "
                      f"target_bits={math.ceil(smallest / total_params * 1e4) / 1e4} (every searched layer at "
                      f"{cfg.candidates[0]} bits{counted}{floats})")


def _thin(points: tuple[Allocation, ...], k: int) -> list[int]:
    """Indices of at most ``k`` frontier points evenly spread in size (first and last included)."""
    if len(points) <= k:
        return list(range(len(points)))
    lo, hi = points[0].size, points[-1].size
    picked, j = [], 0
    for t in range(k):
        target = lo + (hi - lo) * t / (k - 1)
        while j < len(points) - 1 and points[j].size < target:
            j += 1
        if not picked or picked[-1] != j:
            picked.append(j)
    return picked


@dataclasses.dataclass
class Measurement:
    """What every allocation of one model shares (:func:`measure`): the float value and each layer's
    sensitivity at each width. :func:`allocate` chooses from it at any budget without measuring again;
    :meth:`release` frees the evaluator's activations and restores the float weights and their layout."""

    gm: fx.GraphModule
    oracle: object
    cfg: SearchConfig
    all_layers: list[Layer]
    layers: list[Layer]
    searched: list[Layer]
    kept: list[Layer]
    quantizer: LayerQuantizer
    inputs: list[torch.Tensor]
    evaluator: GraphEvaluator
    float_value: float
    measured: dict[str, dict[int, float]]  # measured widths only
    sens: dict[str, dict[int, float]]  # every candidate width
    forwards: int  # layer-forwards of the sensitivity measurement
    eval_forwards: int  # layer-forwards of the measurement's oracle calls
    calls: int  # oracle calls of the measurement
    seconds: float  # its time, the quantizer's statistics included
    verbose: bool
    comm: Comm | None
    undo_layout: Callable[[], None] = lambda: None  # gm's weights back to their own layout

    @property
    def inputs_are_oracles(self) -> bool:
        """Whether :attr:`inputs` are the default oracle's images, in its batches (so its labels fit them)."""
        batches = getattr(self.oracle, "batches", None)
        return isinstance(self.oracle, AccuracyOracle) and len(self.inputs) == len(batches) and \
            all(a is x for a, (x, _) in zip(self.inputs, batches))

    def frontier(self, sizes: list[list[int]]):
        """The exact size/sensitivity Pareto frontier for ``sizes`` (per searched layer and candidate)."""
        return pareto_frontier([[self.sens[lay.name][b] for b in self.cfg.candidates] for lay in self.searched],
                               sizes)

    def release(self) -> None:
        self.evaluator.release()
        self.quantizer.restore()
        self.undo_layout()


# Fields allocate() may change: they decide where to cut, not what is measured.
CHOICE_FIELDS = ("target_bits", "max_bytes", "t_init", "budget_checks", "accept_sigmas")


def _sensitivity_inputs(oracle, inputs: list[torch.Tensor] | None) -> list[torch.Tensor]:
    if inputs is None and isinstance(oracle, AccuracyOracle):
        inputs = [x for x, _ in oracle.batches]
    if not inputs:
        raise ValueError("method='sensitivity' measures each layer on calibration inputs: pass calib_loader "
                         "(or stats_loader) with a custom oracle, or use method='paper'")
    return inputs


def _emitter(verbose: bool, comm: Comm | None):
    return log.info if verbose and (comm is None or comm.is_main) else log.debug


def check_budget(cfg: SearchConfig, all_layers: list[Layer], searched: list[Layer], kept: list[Layer],
                 quantizer: LayerQuantizer) -> tuple[list[list[int]], int, int | None, str]:
    """:func:`budget_sizes`, raising ``ValueError`` (naming the smallest feasible budget) when infeasible."""
    sizes, fixed, budget, unit = budget_sizes(cfg, all_layers, searched, kept, quantizer)
    smallest = fixed + sum(row[0] for row in sizes)
    if budget is not None and smallest > budget:
        n_float = len(all_layers) - len(searched) - len(kept)
        raise _infeasible(cfg, smallest, sum(lay.params for lay in all_layers), len(kept), n_float)
    return sizes, fixed, budget, unit


def measure(gm: fx.GraphModule, oracle, cfg: SearchConfig, *, all_layers: list[Layer], layers: list[Layer],
            keep_8bit, quantizer: LayerQuantizer, inputs: list[torch.Tensor] | None, verbose: bool = True,
            comm: Comm | None = None, t0: float | None = None, hardest_first: bool = False) -> Measurement:
    """Evaluate the float model and measure every searched layer's sensitivity; edits no graph.

    ``inputs`` are the images the sensitivities are measured on (default: the
    accuracy oracle's); ``hardest_first`` re-batches the oracle's images first
    (accuracy mode: rejected points stop early). The caller releases the result.
    """
    t0 = time.perf_counter() if t0 is None else t0
    inputs = _sensitivity_inputs(oracle, inputs)
    searched = [lay for lay in layers if lay.name not in keep_8bit]
    kept = [lay for lay in layers if lay.name in keep_8bit]
    evaluator, undo_layout = open_evaluator(gm, oracle, layers, cfg, comm, inputs[0])
    try:
        float_value = evaluator.order_hardest_first() if hardest_first else None  # it scores the float model too
        if float_value is None:
            float_value, _ = evaluator.evaluate()
        measured, forwards, sens_seconds = measure_sensitivity(
            gm, searched, quantizer, inputs, cfg.candidates, samples=cfg.sensitivity_samples,
            cache_bytes=int(cfg.cache_mb * 2**20), verbose=verbose and (comm is None or comm.is_main))
    except BaseException:
        evaluator.release()
        quantizer.restore()
        undo_layout()
        raise
    _emitter(verbose, comm)("fxquant search: sensitivities of %d layers in %.1f s", len(searched), sens_seconds)
    return Measurement(gm=gm, oracle=oracle, cfg=cfg, all_layers=all_layers, layers=layers, searched=searched,
                       kept=kept, quantizer=quantizer, inputs=inputs, evaluator=evaluator,
                       float_value=float_value, measured=measured,
                       sens={name: extrapolate(m, cfg.candidates) for name, m in measured.items()},
                       forwards=forwards, eval_forwards=evaluator.total_layer_forwards(), calls=evaluator.calls,
                       seconds=time.perf_counter() - t0,
                       verbose=verbose, comm=comm, undo_layout=undo_layout)


def open_evaluator(gm: fx.GraphModule, oracle, layers: list[Layer], cfg: SearchConfig, comm: Comm | None,
                   probe: torch.Tensor | None) -> tuple[GraphEvaluator, Callable[[], None]]:
    """A search's evaluator over ``gm`` switched to channels-last where a probe on ``probe`` allows it
    (:mod:`fxquant.engine.layout`; why not, if not, logged at DEBUG), and the undo of that switch.

    Call it after the quantizer's statistics are measured: they, and so every candidate
    weight, stay the NCHW model's. The caller releases the evaluator and calls the undo.
    """
    undo, why = use_channels_last(gm, probe)
    if why:
        log.debug("fxquant search: forward passes in the model's own layout: %s", why)
    try:
        return GraphEvaluator(gm, oracle, layers, fast=cfg.evaluation == "fast",
                              cache_bytes=int(cfg.cache_mb * 2**20), comm=comm), undo
    except BaseException:
        undo()
        raise


def search_sensitivity(gm: fx.GraphModule, oracle, cfg: SearchConfig, *, all_layers: list[Layer],
                       layers: list[Layer], keep_8bit, quantizer: LayerQuantizer,
                       inputs: list[torch.Tensor] | None, verbose: bool = True, comm: Comm | None = None,
                       t0: float | None = None) -> SearchResult:
    """Search bit-widths with the sensitivity method; annotates ``node.meta`` in place (see module doc).

    Float weights are restored before returning. ``inputs`` are the images the
    sensitivities are measured on (default: the accuracy oracle's). Equals
    :func:`measure` then :func:`allocate`.
    """
    t0 = time.perf_counter() if t0 is None else t0
    inputs = _sensitivity_inputs(oracle, inputs)  # the errors in the order they always came: inputs, budget
    check_budget(cfg, all_layers, [lay for lay in layers if lay.name not in keep_8bit],
                 [lay for lay in layers if lay.name in keep_8bit], quantizer)  # before any measuring
    m = measure(gm, oracle, cfg, all_layers=all_layers, layers=layers, keep_8bit=keep_8bit, quantizer=quantizer,
                inputs=inputs, verbose=verbose, comm=comm, t0=t0, hardest_first=cfg.hardest_first and not cfg.budgeted)
    try:
        return allocate(m, cfg)
    finally:
        m.release()


def allocate(m: Measurement, cfg: SearchConfig, verbose: bool | None = None) -> SearchResult:
    """Choose an allocation from a :class:`Measurement`; annotates ``m.gm``'s ``node.meta`` in place.

    ``cfg`` may differ from the measured config only in :data:`CHOICE_FIELDS` (a budget, ``t_init``,
    ...); every call writes every layer's bits, so nothing of an earlier call remains. Float weights
    are restored before returning; the measurement stays usable. ``verbose`` (default: the
    measurement's) applies to this call only.
    """
    differ = [f.name for f in dataclasses.fields(cfg)
              if f.name not in CHOICE_FIELDS and getattr(cfg, f.name) != getattr(m.cfg, f.name)]
    if differ:
        raise ValueError(f"allocate: the config differs from the measured one in {differ}; only "
                         f"{list(CHOICE_FIELDS)} may change")
    t_start = time.perf_counter()
    emit = _emitter(m.verbose if verbose is None else verbose, m.comm)
    gm, oracle, quantizer, evaluator = m.gm, m.oracle, m.quantizer, m.evaluator
    searched, kept, all_layers, layers = m.searched, m.kept, m.all_layers, m.layers
    calls0, forwards0 = evaluator.calls, evaluator.total_layer_forwards()
    cands = cfg.candidates
    sizes, fixed, budget, unit = check_budget(cfg, all_layers, searched, kept, quantizer)
    total_params = sum(lay.params for lay in all_layers)
    float_value = m.float_value
    try:
        points = m.frontier(sizes).points

        def set_point(p: Allocation) -> None:
            for lay, o in zip(searched, p.choice):
                quantizer.apply(lay, cands[o])
            for lay in kept:
                quantizer.apply(lay, cfg.baseline_bits)

        values: dict[int, float] = {}
        kls: dict[int, float] = {}  # accuracy mode: whole-model KL against float
        scored_with_kl = None  # accuracy mode: i -> (KL, value) from the same forward passes, when possible

        def value_of(i: int, threshold: float | None = None) -> tuple[float, bool]:
            if i in values:  # complete values do not change: the weights of a point are fixed
                return values[i], True
            if threshold is None and scored_with_kl is not None:  # a complete value: the KL comes for free
                kls[i], values[i] = scored_with_kl(i)
                return values[i], True
            set_point(points[i])
            value, complete = evaluator.evaluate(threshold)
            if complete:
                values[i] = value
            return value, complete

        if budget is not None:
            fitting = [i for i, p in enumerate(points) if p.size + fixed <= budget]
            checks = fitting[-cfg.budget_checks:]
            best = None
            for i in reversed(checks):  # ties keep the larger, less sensitive point
                v, _ = value_of(i)
                if best is None or v > values[best]:
                    best = i
            chosen = best
        else:
            total = oracle.total if isinstance(oracle, AccuracyOracle) else None
            # All the images, not the sensitivity subset: the rate pairs each point's KL with its top-1 drop,
            # and on the same images a draw's fragile images raise both (the replay in
            # docs/results/accuracy_mode_walk.md).
            xs, order = canonical_order(m.inputs)
            kl_batches = list(xs[order].split(BATCH))
            quantizer.restore()
            ref = reference_logprobs(gm, kl_batches)

            def kl_of(i: int) -> float:
                if i not in kls:
                    set_point(points[i])
                    kls[i] = model_kl(gm, kl_batches, ref)
                return kls[i]

            if m.inputs_are_oracles:  # the KL's images are the oracle's: one pass gives both
                targets = list(torch.cat([y for _, y in oracle.batches])[order].split(BATCH))

                def scored_with_kl(i: int) -> tuple[float, float]:
                    set_point(points[i])
                    evaluator.calls += 1
                    kl, correct = model_kl_and_correct(gm, kl_batches, ref, targets, oracle)
                    return kl, oracle.accuracy(correct)

            span = (points[-1].size - points[0].size) / (WALK_STEP * total_params)
            walk = _thin(points, max(2, min(256, int(span) + 1)))
            chosen, info = choose_point(walk, value_of, kl_of, float_value, cfg.t_init, total, cfg.accept_sigmas,
                                        emit)
            if info["rate"] is not None:
                emit("fxquant search: accuracy drop per nat of KL %.3g (from %d anchors), allowed drop %.3g",
                     info["rate"], len(info["anchors"]), info["allowed_drop"])
        if chosen not in values:
            value_of(chosen)
        final_value = values[chosen]
        for lay in layers:
            quantizer.apply(lay, cfg.baseline_bits)
        baseline, _ = evaluator.evaluate()
    finally:
        quantizer.restore()

    choice = points[chosen].choice
    bits = {lay.name: cfg.baseline_bits for lay in layers}
    bits.update({lay.name: cands[o] for lay, o in zip(searched, choice)})
    update_layer_infos(gm, {name: {"bits": b} for name, b in bits.items()})
    shown = set(_thin(points, 64)) | set(values)
    shown |= set(kls)
    frontier = tuple(frontier_point(cfg, quantizer, searched, kept, all_layers, p, values.get(i), i == chosen,
                                     kls.get(i)) for i, p in enumerate(points) if i in shown)
    layer_forwards = m.forwards + m.eval_forwards + evaluator.total_layer_forwards() - forwards0
    result = SearchResult(bits=bits, decisions=(), float_value=float_value, baseline_value=baseline,
                          final_value=final_value, oracle_calls=m.calls + evaluator.calls - calls0,
                          layer_forwards=layer_forwards,
                          seconds=m.seconds + time.perf_counter() - t_start,
                          evaluation="fast" if evaluator.fast else "naive",
                          config=dataclasses.replace(cfg, quant=quantizer.config, method="sensitivity"),
                          method="sensitivity", sensitivity={k: dict(v) for k, v in m.measured.items()},
                          frontier=frontier)
    emit("fxquant search: %s, %.3f average bits, oracle %.3f (float %.3f, all-%d-bit %.3f), %d frontier "
         "points (%d checked), %d oracle calls, %.1f s",
         f"budget {budget + 0} {unit}" if budget is not None else f"t_init {cfg.t_init:g}",
         next(f.average_bits for f in frontier if f.chosen), final_value, float_value, cfg.baseline_bits,
         baseline, len(points), len(values), result.oracle_calls, result.seconds)
    return result


def frontier_point(cfg, quantizer, searched, kept, all_layers, p: Allocation, value, chosen,
                   kl=None) -> FrontierPoint:
    """The report's view of frontier allocation ``p``: eq. 5 average bits, bytes, and what was measured."""
    widths = {lay.name: cfg.candidates[o] for lay, o in zip(searched, p.choice)}
    widths.update({lay.name: cfg.baseline_bits for lay in kept})
    total = sum(lay.params for lay in all_layers)
    avg = sum(lay.params * widths.get(lay.name, FLOAT_BITS) for lay in all_layers) / total
    nbytes = sum(packed_nbytes(lay.params, b) + _grid_bytes(quantizer, lay, cfg.candidates[0])
                 for lay in (*searched, *kept) for b in (widths[lay.name],))
    return FrontierPoint(average_bits=avg, nbytes=nbytes, sensitivity=p.cost, value=value, chosen=chosen, kl=kl)
