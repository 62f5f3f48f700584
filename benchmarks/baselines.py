"""Baseline bit allocations for the Pareto benchmark (not part of the library).

Both give ``{layer: bits}`` at an eq. 5 budget; the model is then built with
fxquant's own candidate quantizer (:func:`build`: GPTQ rounding + analytic bias
correction from the statistics images, exactly the weights the search
measures), so that between methods only the allocation differs.

* HAWQ-v2-style (Dong et al., 2020): the sensitivity of layer ``l`` at ``b``
  bits is ``mean diag Hessian(l) * ||W_l - Q_b(W_l)||^2``, with ``Tr(H_l) / n_l``
  estimated by Hutchinson's method (Rademacher ``v``, ``v^T H v``) on the
  cross-entropy loss of calibration batches, and the allocation is the
  knapsack optimum at the budget (:func:`fxquant.core.allocate.allocate`).
* ZeroQ-style (Cai et al., 2020): the sensitivity is the mean KL divergence
  between the float model's outputs and those with only ``l`` at ``b`` bits
  (measured on the calibration images, as ZeroQ's distilled data is not
  needed when real images are at hand), every width measured, then the same
  knapsack. No oracle checks the result.
"""

from __future__ import annotations

import logging
import math
import time
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from fxquant import passes
from fxquant.core.allocate import allocate
from fxquant.core.calibration import calibration_inputs
from fxquant.core.config import QuantConfig
from fxquant.passes.calibrate import LayerQuantizer
from fxquant.passes.layers import weight_of
from fxquant.passes.sensitivity import measure_sensitivity

__all__ = ["Prepared", "prepare", "build", "hawq_sensitivity", "zeroq_sensitivity", "knapsack_bits"]

CANDIDATES = (1, 2, 3, 4, 5, 6, 7, 8)
log = logging.getLogger("fxquant.bench")


class Prepared:
    """A traced copy of the float model with its candidate quantizer (statistics measured once)."""

    def __init__(self, model: nn.Module, stats_loader, quant: QuantConfig | None = None):
        t0 = time.perf_counter()
        self.gm = passes.trace(model.eval())
        self.layers = passes.find_layers(self.gm)
        cfg = (quant or QuantConfig()).data_aware(True)
        self.quantizer = LayerQuantizer(self.gm, self.layers, cfg, calibration_inputs(stats_loader, cfg.calib_samples))
        self.config = cfg
        self.setup_seconds = time.perf_counter() - t0


def prepare(model: nn.Module, stats_loader, quant: QuantConfig | None = None) -> Prepared:
    return Prepared(model, stats_loader, quant)


def build(prep: Prepared, bits: dict[str, int]):
    """The quantized GraphModule at ``bits`` with the prepared quantizer's weights (a fresh copy)."""
    import copy

    gm = copy.deepcopy(prep.gm)
    passes.annotate_importance(gm, layers=prep.layers)
    return passes.rewrite(gm, bits, config=prep.config, layers=prep.layers,
                          quantized=prep.quantizer.chosen(bits))


def knapsack_bits(prep: Prepared, sens: dict[str, dict[int, float]], target_bits: float) -> dict[str, int]:
    """The allocation of least summed sensitivity with eq. 5 average ``<= target_bits``."""
    total = sum(lay.params for lay in prep.layers)
    budget = math.floor(Fraction(target_bits) * total)
    costs = [[sens[lay.name][b] for b in CANDIDATES] for lay in prep.layers]
    sizes = [[lay.params * b for b in CANDIDATES] for lay in prep.layers]
    got = allocate(costs, sizes, budget)
    return {lay.name: CANDIDATES[o] for lay, o in zip(prep.layers, got.choice)}


def hawq_sensitivity(prep: Prepared, calib_loader, *, max_images: int = 512, probes: int = 16,
                     seed: int = 0) -> tuple[dict[str, dict[int, float]], float]:
    """HAWQ-v2: ``Tr(H_l)/n_l * ||W_l - Q_b(W_l)||^2`` per layer and width; returns (sens, seconds).

    ``Tr(H_l)`` is Hutchinson's estimate with ``probes`` Rademacher vectors per batch. With
    few probes the off-diagonal Hessian mass dominates it and it can come out negative,
    which would make the layer look free to quantize; a layer whose estimate is not
    positive gets the smallest positive mean diagonal measured instead, with a warning.
    """
    t0 = time.perf_counter()
    gm = prep.gm
    weights = [weight_of(gm, lay) for lay in prep.layers]
    flags = [w.requires_grad for w in weights]
    for w in weights:
        w.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    traces = [0.0] * len(weights)
    seen = 0
    try:
        for x, y in calib_loader:
            if seen >= max_images:
                break
            x, y = x[: max_images - seen], y[: max_images - seen]
            loss = F.cross_entropy(gm(x), y)
            grads = torch.autograd.grad(loss, weights, create_graph=True)
            for _ in range(probes):
                vs = [torch.randint(0, 2, g.shape, generator=gen).to(g.dtype) * 2 - 1 for g in grads]
                hv = torch.autograd.grad(grads, weights, grad_outputs=vs, retain_graph=True)
                for i, (v, h) in enumerate(zip(vs, hv)):
                    traces[i] += float((v * h).sum()) * len(x) / probes
            seen += len(x)
    finally:
        for w, f in zip(weights, flags):
            w.requires_grad_(f)
            w.grad = None
    diags = [tr / seen / lay.params for lay, tr in zip(prep.layers, traces)]  # mean Hessian diagonal
    positive = [d for d in diags if d > 0]
    floor = min(positive) if positive else 1.0
    for lay, d in zip(prep.layers, diags):
        if d <= 0:
            log.warning("hawq: %s has a non-positive Hessian trace estimate (%.3g per weight); using %.3g",
                        lay.name, d, floor)
    sens = {}
    with torch.no_grad():
        for lay, w, d in zip(prep.layers, weights, diags):
            mean_diag = max(d, floor)
            err = {b: float(((prep.quantizer.quantized(lay, b)[0].dequantize() - w) ** 2).sum()) for b in CANDIDATES}
            sens[lay.name] = {b: mean_diag * e for b, e in err.items()}
    return sens, time.perf_counter() - t0


def zeroq_sensitivity(prep: Prepared, calib_loader, *, max_images: int = 512
                      ) -> tuple[dict[str, dict[int, float]], float]:
    """ZeroQ: mean KL(float || only layer l at b bits) for every layer and width; returns (sens, seconds)."""
    t0 = time.perf_counter()
    inputs = calibration_inputs(calib_loader, 1 << 62)
    sens, _, _ = measure_sensitivity(prep.gm, prep.layers, prep.quantizer, inputs, CANDIDATES,
                                     samples=max_images, negligible=-1.0)
    prep.quantizer.restore()
    return sens, time.perf_counter() - t0
