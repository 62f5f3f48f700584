"""The paper's layer-importance equations (1-3) and average bit-width (5), on plain numbers.

``N_P(l) = params(l) / total``                                   (eq. 1)
``N_V(l) = log(e - 1 + var(l) / max_k var(k))``                  (eq. 2)
``Importance(l) = w_P * N_P(l) + w_V * (1 - N_V(l))``            (eq. 3)
``b_avg = sum_l N_P(l) * b(l)``                                  (eq. 5)

``total`` is the parameter count of the quantizable layers, so the ``N_P``
sum to 1 and eq. 5 is a true weighted mean (the paper's "total number of
parameters in the model" also counts biases and norm parameters, under 0.1% of
a ResNet).
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["normalized_params", "normalized_variance", "importance", "importance_scores", "average_bits",
           "FLOAT_BITS"]

FLOAT_BITS = 32  # what eq. 5 counts for a layer left in float


def normalized_params(params: Sequence[int]) -> list[float]:
    """Eq. 1 for every layer."""
    total = sum(params)
    if total <= 0:
        raise ValueError("normalized_params: the layers hold no parameters")
    return [p / total for p in params]


def normalized_variance(variances: Sequence[float]) -> list[float]:
    """Eq. 2 for every layer; in ``[log(e - 1), 1]``. All-zero variances give ``log(e - 1)``."""
    if any(v < 0 or not math.isfinite(v) for v in variances):
        raise ValueError(f"normalized_variance: variances must be finite and >= 0, got {list(variances)}")
    top = max(variances, default=0.0)
    return [math.log(math.e - 1 + (v / top if top > 0 else 0.0)) for v in variances]


def importance(n_p: float, n_v: float, w_p: float = 0.5, w_v: float = 0.5) -> float:
    """Eq. 3."""
    return w_p * n_p + w_v * (1.0 - n_v)


def importance_scores(params: Sequence[int], variances: Sequence[float], w_p: float = 0.5,
                      w_v: float = 0.5) -> tuple[list[float], list[float], list[float]]:
    """``(N_P, N_V, Importance)`` lists for layers given their sizes and weight variances."""
    if len(params) != len(variances):
        raise ValueError(f"importance_scores: {len(params)} sizes but {len(variances)} variances")
    for label, w in (("w_p", w_p), ("w_v", w_v)):
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"importance weight {label} must be finite and >= 0, got {w!r}")
    n_p = normalized_params(params)
    n_v = normalized_variance(variances)
    return n_p, n_v, [importance(p, v, w_p, w_v) for p, v in zip(n_p, n_v)]


def average_bits(params: Sequence[int], bits: Sequence[float | None]) -> float:
    """Eq. 5: the parameter-weighted mean bit-width; ``None`` (a float layer) counts as :data:`FLOAT_BITS`."""
    if len(params) != len(bits):
        raise ValueError(f"average_bits: {len(params)} sizes but {len(bits)} bit-widths")
    return sum(n * (FLOAT_BITS if b is None else b) for n, b in zip(normalized_params(params), bits))
