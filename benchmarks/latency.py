"""Interleaved forward latency of several models in one process, as ratios to a reference.

Shared by the benchmark scripts. Every model runs on the same input, one after
the other within a round, the order reversed on every other round so that a
slow drift of the machine (another job starting, thermal throttling) hits every
model alike; the ratio of a model to the reference is the median over rounds of
the per-round ratios, so pairs timed seconds apart are compared, not a model
timed at the start against one timed minutes later.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Latency", "interleaved_latency"]


@dataclass(frozen=True)
class Latency:
    """Median milliseconds per forward and median per-round ratio to the reference."""

    ms: float
    ratio: float


def _time_calls(model: nn.Module, x: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        model(x)
    return (time.perf_counter() - start) / calls


def interleaved_latency(models: dict[str, nn.Module], reference: str, batch: int, *, rounds: int = 9,
                        min_seconds: float = 0.2, input_shape: tuple[int, ...] = (3, 64, 64),
                        seed: int = 0) -> dict[str, Latency]:
    """Latency of every model in ``models`` at ``batch``, relative to ``models[reference]``.

    Each round times every model over enough consecutive calls to last about
    ``min_seconds`` (counted on the reference, at least one call). Runs under
    ``torch.inference_mode()``; the caller fixes the thread count.
    """
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models: {', '.join(models)}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
    names = list(models)
    with torch.inference_mode():
        for model in models.values():  # warm-up: first-call allocations, lazy kernel choices
            model(x)
            model(x)
        calls = max(1, round(min_seconds / _time_calls(models[reference], x, 1)))
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            for name in (names if r % 2 == 0 else reversed(names)):
                seconds[name].append(_time_calls(models[name], x, calls))
    ref = seconds[reference]
    return {name: Latency(ms=statistics.median(times) * 1e3,
                          ratio=statistics.median(t / f for t, f in zip(times, ref)))
            for name, times in seconds.items()}
