"""Accuracy mode of the sensitivity search: where to cut the frontier, decided on a smooth statistic.

The sensitivity search (:mod:`fxquant.passes.sensitivity_search`) orders all
allocations along one size/sensitivity frontier; accuracy mode must pick the
smallest point within ``t_init`` of the float model. Deciding that on the top-1
count of each candidate point is deciding it on noise: near the cut, the drop of
neighbouring points differs by a few calibration images, a bisection over them
jumps whenever one point is unlucky, and the chosen size spread 1.25-1.85 average
bits over five calibration draws of the same ResNet18 (issue 15).

Here the top-1 oracle only measures a *rate*, where drops are large enough to
count, and the cut itself is placed on a smooth statistic:

1. **Anchors.** Search the walk (:func:`first_passing`) for the smallest point
   whose oracle drop is within ``ANCHOR_FACTOR * t_init`` (4 points at the default
   0.5); take it and the next ``ANCHORS - 1`` walk points, each evaluated on the
   whole calibration set. Far from the cut on purpose: there the anchors' drops
   are tens of lost images, so the rate's counting noise is small.
2. **Rate.** ``c = sum(drop) / sum(KL)`` over the anchors (drops below zero count
   as zero), where ``KL`` is the full model's mean ``KL(p_float || p_point)`` on
   all the calibration images: the accuracy drop per nat of prediction change,
   pooled over anchors whose drops are tens of images, not a handful, and
   measured on the same images as the drops (a draw's fragile images raise both).
3. **Cut.** The allowed drop ``d*`` is the largest drop that passes the statistical
   margin of :func:`allowed_drop` (today's rule: drop plus ``accept_sigmas`` standard
   errors within ``t_init``); the chosen point is the smallest from the first
   anchor up with ``c * KL <= d*`` (the smaller points already lost more than the
   anchor window), searched on ``KL`` (which falls smoothly along the frontier),
   so single images no longer place the cut.
4. **Check.** The chosen point is evaluated; if its measured drop exceeds
   ``t_init`` (the rate was off for it) the walk moves up until one does not, so
   a returned model is never measurably worse than asked on the calibration set.

Designed on five calibration draws kept apart from the benchmark's (5-9, EuroSAT
ResNet18, ``benchmarks/accuracy_mode_walk.py``: every point of the search's walk,
replayed in ``docs/results/accuracy_mode_walk.md``). With anchors within 2 points
and KL on the 512 sensitivity images the cuts spread 1.20-1.45 bits; KL on all
images and anchors within 4 points cut at 1.30-1.35, and on bootstrap resamples
of the calibration images five draws stayed within max/min 1.15 in 74% of sets.
The price of distant anchors: the drop grows a little slower than KL there, so
the rate comes out a little low and the cut a little aggressive (median test drop
on those draws 0.0 points; the check step bounds it). The window scales with
``t_init``; with a large ``t_init`` that bias grows and the check carries more of
the result. Pure control flow over callables; the forward passes are the caller's.
"""

from __future__ import annotations

import math
from typing import Callable

__all__ = ["ANCHOR_FACTOR", "ANCHORS", "allowed_drop", "drop_per_kl", "first_passing", "choose_point"]

ANCHOR_FACTOR = 8.0  # anchors: the first frontier points within this many t_init of float
ANCHORS = 3  # walk points whose drop/KL ratio is pooled


def allowed_drop(t_init: float, total: int | None, sigmas: float) -> float:
    """The largest drop ``d`` with ``d + sigmas * 100 * sqrt(max(1, d * total / 100)) / total <= t_init``.

    That is the acceptance rule for a measured top-1 drop ``d`` (points) on ``total``
    images: the drop plus ``sigmas`` binomial standard errors of the lost images.
    Without ``total`` (a user oracle, units unknown) it is ``t_init``. Example: 2,000
    images, ``t_init`` 0.5, 2 sigmas: ``d* = 0.268`` points (about 5 images).
    """
    if total is None:
        return t_init
    one = 100.0 / total  # one image, in points
    if one + sigmas * one <= t_init:  # d >= one image: d + k sqrt(d) <= t with k = sigmas * 10 / sqrt(total)
        k = sigmas * 10.0 / math.sqrt(total)
        s = (-k + math.sqrt(k * k + 4.0 * t_init)) / 2.0
        return s * s
    return t_init - sigmas * one  # below one lost image the error term is constant (may be < 0: none passes)


def drop_per_kl(anchors: list[tuple[float, float]]) -> float | None:
    """Pooled ``sum(max(drop, 0)) / sum(kl)`` over ``(kl, drop)`` pairs; None if it is not positive."""
    kl = sum(k for k, _ in anchors if k > 0)
    drop = sum(max(d, 0.0) for k, d in anchors if k > 0)
    if kl <= 0 or drop <= 0:
        return None
    return drop / kl


def first_passing(start: int, stop: int, passes: Callable[[int], bool]) -> int | None:
    """The smallest ``p`` in ``[start, stop)`` with ``passes(p)``, for a test that passes from some point on.

    Galloping search: ``start, start+1, start+3, start+7, ...`` until a pass, then a
    bisection below it. The cut of accuracy mode lies near the small end of the
    frontier, where tests fail fast (an oracle evaluation stops early once it cannot
    reach its threshold), so this costs a few cheap failures instead of the complete
    evaluations a bisection from the middle spends on the wide points.
    """
    if start >= stop:
        return None
    failed, step, p = start - 1, 1, start
    while True:
        if passes(p):
            break
        failed = p
        if p == stop - 1:
            return None
        p = min(p + step, stop - 1)
        step *= 2
    lo, hi = failed + 1, p  # passes(hi); everything at or below `failed` failed
    while lo < hi:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def choose_point(walk: list[int], value_of: Callable[..., tuple[float, bool]], kl_of: Callable[[int], float],
                 float_value: float, t_init: float, total: int | None, sigmas: float,
                 emit: Callable[..., None] = lambda *a: None, *, anchor_factor: float = ANCHOR_FACTOR,
                 n_anchors: int = ANCHORS) -> tuple[int, dict]:
    """``(chosen frontier index, what decided it)`` along ``walk`` (frontier indices, ascending size).

    ``value_of(i, threshold=None) -> (value, complete)`` evaluates frontier point
    ``i`` with the oracle (an evaluation may stop early once it cannot reach
    ``threshold``); ``kl_of(i)`` is its mean KL against the float model. See the
    module docstring for the steps; ``anchor_factor`` and ``n_anchors`` exist for
    the replay studies in ``benchmarks/``.
    """
    if not walk:
        raise ValueError("accuracy mode: the walk has no frontier points to choose from")
    if n_anchors < 1 or not anchor_factor > 0:
        raise ValueError(f"accuracy mode: n_anchors must be >= 1 and anchor_factor > 0, got n_anchors={n_anchors}, "
                         f"anchor_factor={anchor_factor}")
    floor = float_value - t_init
    anchor_floor = float_value - anchor_factor * t_init

    def within_anchor_floor(pos: int) -> bool:
        v, complete = value_of(walk[pos], anchor_floor)
        return complete and v >= anchor_floor

    first = first_passing(0, len(walk), within_anchor_floor)
    if first is None:
        emit("fxquant search: no frontier point within %g of float; taking the widest", anchor_factor * t_init)
        return walk[-1], {"rate": None, "allowed_drop": None, "anchors": ()}
    anchors = []
    for pos in range(first, min(first + n_anchors, len(walk))):
        v, _ = value_of(walk[pos])
        anchors.append((kl_of(walk[pos]), float_value - v))
    rate = drop_per_kl(anchors)
    d_star = allowed_drop(t_init, total, sigmas)
    if rate is None:  # no measurable drop at the anchors: the first anchor is as good as any wider point
        emit("fxquant search: no accuracy drop at the anchors; cutting at the first of them")
        pos = first
    elif d_star <= 0:
        emit("fxquant search: t_init=%g is within the oracle's noise on %d images; the oracle check alone "
             "places the cut", t_init, total or 0)
        pos = first
    else:
        pos = first_passing(first, len(walk), lambda q: rate * kl_of(walk[q]) <= d_star)
        pos = len(walk) - 1 if pos is None else pos

    def within_floor(q: int) -> bool:
        v, complete = value_of(walk[q], floor)
        return complete and v >= floor

    # The check: never return a point measurably worse than t_init on the calibration set.
    checked = first_passing(pos, len(walk), within_floor)
    if checked is None:
        emit("fxquant search: no frontier point from the cut up is within t_init=%g of float; taking the widest",
             t_init)
        checked = len(walk) - 1
    elif checked != pos:
        emit("fxquant search: the predicted cut (frontier point %d) lost more than t_init=%g on the oracle; "
             "moved up to point %d", walk[pos], t_init, walk[checked])
    info = {"rate": rate, "allowed_drop": d_star, "anchors": tuple(anchors)}
    return walk[checked], info
