"""Sensitivity pass: how much each layer, alone at each width, changes the model's predictions.

The sensitivity of layer ``l`` at ``b`` bits is the mean, over calibration
images, of ``KL(p_float || p_lb)``: the float model's softmax against that of
the model with only ``l`` quantized at ``b`` bits (others float). Unlike a
top-1 count it moves smoothly with the weights, so a handful of images does not
decide it, and it is additive enough across layers for a global allocation
(:mod:`fxquant.core.allocate`).

Invariance: the images are re-batched in an order given by their content (a
hash of each image's bytes) with a fixed batch size, so the user's batch size
and batch order do not reach any forward pass; the per-image KLs are summed in
float64 in that order, and each value is rounded to 5 significant digits so
that last-bit differences of other thread counts cannot reorder allocations.
``samples`` > 0 keeps the first ``samples`` images of that order (a
content-determined random subset).

Cost: a ``(layer, bits)`` runs only the layer's downstream cone, from frontier
values cached by :class:`~fxquant.engine.evaluate.GraphEvaluator`; widths are
tried from the lowest up and, once a layer's sensitivity falls below
``negligible``, the wider ones are extrapolated (quantization noise power falls
4x per bit: ``s(b + 1) = s(b) / 4``) rather than measured.
"""

from __future__ import annotations

import hashlib
import logging
import time

import torch
from torch import fx

from fxquant.engine.evaluate import GraphEvaluator
from fxquant.engine.oracle import AccuracyOracle
from fxquant.passes.calibrate import LayerQuantizer
from fxquant.schema import Layer

__all__ = ["canonical_batches", "canonical_order", "measure_sensitivity", "extrapolate", "reference_logprobs",
           "model_kl", "model_kl_and_correct", "NEGLIGIBLE"]

log = logging.getLogger("fxquant.search")

NEGLIGIBLE = 1e-4  # mean KL (nats) below which wider widths are extrapolated, not measured
BATCH = 64  # the fixed internal batch size (the user's never reaches a forward pass)


def canonical_batches(inputs: list[torch.Tensor], samples: int = 0, batch: int = BATCH) -> list[torch.Tensor]:
    """``inputs``' images in content order (at most ``samples`` of them, 0 = all), in batches of ``batch``."""
    xs, order = canonical_order(inputs, samples)
    return list(xs[order].split(batch))


def canonical_order(inputs: list[torch.Tensor], samples: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(all images concatenated, indices of the content order)``: :func:`canonical_batches` before batching.

    The indices also put anything aligned with the images (their labels) in the same order.
    """
    if not inputs:
        raise ValueError("sensitivity: no calibration inputs to measure sensitivities on")
    shapes = {(tuple(x.shape[1:]), x.dtype) for x in inputs}
    if len(shapes) > 1:
        raise ValueError(f"sensitivity: calibration inputs differ in shape/dtype ({sorted(map(str, shapes))[:3]}); "
                         "pass batches of one image shape")
    xs = torch.cat([x.detach().cpu() for x in inputs])
    flat = xs.reshape(len(xs), -1).contiguous()
    keys = [hashlib.blake2b(row.numpy().tobytes(), digest_size=8).digest() for row in flat]
    # Equal keys mean equal images: their relative order cannot change any value.
    order = sorted(range(len(xs)), key=keys.__getitem__)
    if samples and len(order) > samples:
        order = order[:samples]
    return xs, torch.tensor(order, dtype=torch.long)


def _logits(out) -> torch.Tensor:
    out = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError(f"sensitivity: the model must return logits [batch, classes], got "
                         f"{type(out).__name__}{'' if not isinstance(out, torch.Tensor) else tuple(out.shape)}")
    return out


def _kl_sum(ref_logp: torch.Tensor, logits: torch.Tensor) -> float:
    logq = torch.log_softmax(_logits(logits).double(), dim=1)
    return float((ref_logp.exp() * (ref_logp - logq)).sum(dim=1).clamp_min(0).sum())


def _round(value: float) -> float:
    return float(f"{value:.5g}")


@torch.no_grad()
def reference_logprobs(gm: fx.GraphModule, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """The model's float64 log-probabilities per batch: the reference :func:`model_kl` compares against."""
    return [torch.log_softmax(_logits(gm(x.clone())).double(), dim=1) for x in batches]


@torch.no_grad()
def model_kl(gm: fx.GraphModule, batches: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """Mean ``KL(reference || gm)`` over ``batches`` (the whole model as it is now), rounded as sensitivities are."""
    return model_kl_and_correct(gm, batches, ref)[0]


@torch.no_grad()
def model_kl_and_correct(gm: fx.GraphModule, batches: list[torch.Tensor], ref: list[torch.Tensor],
                         targets: list[torch.Tensor] | None = None, oracle: AccuracyOracle | None = None
                         ) -> tuple[float, int | None]:
    """:func:`model_kl` and, from the same forward passes, ``oracle``'s correct count on ``targets`` (or None)."""
    total, correct = 0.0, None if targets is None else 0
    for i, (r, x) in enumerate(zip(ref, batches)):
        logits = gm(x.clone())  # clone: a graph may write its input
        total += _kl_sum(r, logits)
        if targets is not None:
            correct += oracle.correct(logits, targets[i], i)
    return _round(total / sum(len(x) for x in batches)), correct


def extrapolate(measured: dict[int, float], candidates: tuple[int, ...]) -> dict[int, float]:
    """Every candidate's sensitivity: measured ones as they are, wider ones from the widest measured (/4 per bit)."""
    top = max(measured)
    out = {}
    for b in candidates:
        out[b] = measured[b] if b in measured else (
            _round(measured[top] * 4.0 ** -(b - top)) if b > top else measured[min(measured)])
    return out


@torch.no_grad()
def measure_sensitivity(gm: fx.GraphModule, layers: list[Layer], quantizer: LayerQuantizer,
                        inputs: list[torch.Tensor], candidates: tuple[int, ...], *, samples: int = 512,
                        negligible: float = NEGLIGIBLE, cache_bytes: int = 4 << 30, verbose: bool = False
                        ) -> tuple[dict[str, dict[int, float]], int, float]:
    """``({layer: {bits: mean KL}}, layer_forwards, seconds)`` for the measured widths of ``layers``.

    ``gm``'s weights must be float; each layer is restored to float after it is
    measured (in place, through ``quantizer``). See the module docstring.
    """
    t0 = time.perf_counter()
    batches = canonical_batches(inputs, samples)
    n = sum(len(x) for x in batches)
    ref = reference_logprobs(gm, batches)
    # The evaluator only needs batches to cache frontiers; its labels are never scored.
    oracle = AccuracyOracle([(x, torch.zeros(len(x), dtype=torch.long)) for x in batches])
    evaluator = GraphEvaluator(gm, oracle, layers, fast=True, cache_bytes=cache_bytes)
    order = sorted(layers, key=lambda lay: lay.order)  # upstream first: frontiers build on each other
    evaluator.plan(order)
    emit = log.info if verbose else log.debug
    out: dict[str, dict[int, float]] = {}
    try:
        for step, layer in enumerate(order, 1):
            evaluator.focus(layer)
            measured: dict[int, float] = {}
            for bits in sorted(candidates):
                quantizer.apply(layer, bits)
                outs = evaluator.outputs_focused()
                total = 0.0
                for logp, logits in zip(ref, outs):
                    total += _kl_sum(logp, logits)
                measured[bits] = _round(total / n)
                if measured[bits] <= negligible:
                    break
            quantizer.apply(layer, None)
            evaluator.visited(layer)
            out[layer.name] = measured
            emit("[%d/%d] sensitivity %s: %s", step, len(order), layer.name,
                 " ".join(f"{b}:{v:.3g}" for b, v in measured.items()))
    finally:
        evaluator.release()
    return out, evaluator.layer_forwards, time.perf_counter() - t0
