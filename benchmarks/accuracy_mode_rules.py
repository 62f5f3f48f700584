"""Acceptance rules for accuracy mode, replayed on the data of ``accuracy_mode_study.py`` (no model runs).

Each rule sees what the search would see of one calibration draw (the frontier
points in ascending size with their calibration statistics and the float
model's) and returns the index of the point it keeps; :func:`report` prints, per
rule, the average bits and test drop on every draw and the spread of the bits
(max / min, issue 15's target: <= 1.15). ``previous`` is the rule accuracy mode
used before (as a scan; the search bisected, which jumps further on unlucky
points), ``fxquant`` the one it uses now (:func:`fxquant.passes.accuracy_mode.choose_point`
run on the recorded values), the others alternatives that were considered.
"""

from __future__ import annotations

import math
import statistics

from fxquant.passes.accuracy_mode import choose_point

__all__ = ["RULES", "WALK_RULES", "choose", "report", "walk_report", "walk_resampled"]

T_INIT = 0.5


def _drops(draw: dict) -> list[float]:
    f = draw["float"]["calib"]["top1"]
    return [f - p["calib"]["top1"] for p in draw["points"]]


def _n(draw: dict) -> int:
    return draw.get("n_calib", 2000)


def previous(draw: dict, t_init: float = T_INIT, sigmas: float = 2.0) -> int:
    """The earlier rule, as a scan: top-1 drop + ``sigmas`` standard errors (100 sqrt(lost) / N) within t_init."""
    n = _n(draw)
    for i, d in enumerate(_drops(draw)):
        lost = max(1.0, d / 100.0 * n)
        if d + sigmas * 100.0 * math.sqrt(lost) / n <= t_init:
            return i
    return len(draw["points"]) - 1


def plain(draw: dict, t_init: float = T_INIT) -> int:
    """The smallest point whose calibration drop is within ``t_init``."""
    return next((i for i, d in enumerate(_drops(draw)) if d <= t_init), len(draw["points"]) - 1)


def _isotonic_decreasing(ys: list[float]) -> list[float]:
    """Pool-adjacent-violators: the non-increasing sequence closest to ``ys`` in least squares."""
    blocks: list[list[float]] = []  # [sum, count]
    for y in ys:
        blocks.append([y, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    out = []
    for s, c in blocks:
        out += [s / c] * c
    return out


def isotonic(draw: dict, t_init: float = T_INIT) -> int:
    """The smallest point whose drop, fitted non-increasing in size over all points, is within ``t_init``."""
    fitted = _isotonic_decreasing(_drops(draw))
    return next((i for i, d in enumerate(fitted) if d <= t_init), len(fitted) - 1)


def kl_fit(draw: dict, t_init: float = T_INIT, min_drop: float = 0.5) -> int:
    """The smallest point whose drop, predicted by a power law in KL fitted where drops >= 0.5, is within t_init.

    ``log drop = a + b log KL`` on the points whose drop is large enough to be measured (>= ``min_drop``).
    """
    drops = _drops(draw)
    kls = [p["calib"]["kl"] for p in draw["points"]]
    pts = [(math.log(k), math.log(d)) for k, d in zip(kls, drops) if d >= min_drop and k > 0]
    if len(pts) < 2:
        return plain(draw, t_init)
    mx, my = statistics.fmean(x for x, _ in pts), statistics.fmean(y for _, y in pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    b = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx > 0 else 1.0
    a = my - b * mx
    pred = [math.exp(a + b * math.log(k)) if k > 0 else 0.0 for k in kls]
    return next((i for i, d in enumerate(pred) if d <= t_init), len(pred) - 1)


def soft(draw: dict, t_init: float = T_INIT) -> int:
    """The smallest point whose mean drop of the true class's probability (points) is within ``t_init``."""
    return next((i for i, p in enumerate(draw["points"]) if p["calib"]["soft_drop"] <= t_init),
                len(draw["points"]) - 1)


def disagree(draw: dict, t_init: float = T_INIT) -> int:
    """The smallest point whose top-1 disagreement with float (%) is within ``t_init`` (bounds |drop|)."""
    return next((i for i, p in enumerate(draw["points"]) if p["calib"]["disagree"] <= t_init),
                len(draw["points"]) - 1)


def fxquant(draw: dict, t_init: float = T_INIT, sigmas: float = 2.0) -> int:
    """Accuracy mode now: the drop predicted from the whole model's KL at a rate measured on anchors, then checked."""
    f = draw["float"]["calib"]["top1"]
    pts = draw["points"]

    def value_of(i, threshold=None):
        v = pts[i]["calib"]["top1"]
        return v, threshold is None or v >= threshold  # an early stop only ever marks a failing value

    chosen, _ = choose_point(list(range(len(pts))), value_of, lambda i: pts[i]["calib"]["kl"], f, t_init,
                             _n(draw), sigmas)
    return chosen


RULES = {"previous": previous, "fxquant": fxquant, "plain": plain, "isotonic": isotonic, "kl_fit": kl_fit, "soft": soft,
         "disagree": disagree}


def choose(rule: str, draw: dict) -> dict:
    i = RULES[rule](draw)
    p = draw["points"][i]
    return {"index": i, "avg_bits": p["avg_bits"],
            "test_drop": draw["float"]["test"]["top1"] - p["test"]["top1"]}


def report(data: dict) -> str:
    """Markdown: per rule, average bits / test drop on every draw, the bits' spread and the median drop."""
    draws = data["draws"]
    lines = ["# Accuracy mode: acceptance rules replayed on recorded calibration draws", "",
             "Generated by `python benchmarks/accuracy_mode_study.py --analyse` from `accuracy_mode_study.json` "
             "(measured by `OMP_NUM_THREADS=2 python benchmarks/accuracy_mode_study.py --threads 2`). "
             f"{data['model']}, calibration draws {', '.join(draws)} (2,000 training images each), frontier "
             f"points at average bits {data['grid'][0]}–{data['grid'][-1]} in steps of 0.1; t_init {T_INIT}. "
             "Each cell: average bits / held-out test drop in points. The replay's KL is over all 2,000 "
             "calibration images, unrounded, as the search computes it now (until 2026-12-03 on its 512 "
             "sensitivity images; the finer study is `accuracy_mode_walk.md`). "
             "On this coarse grid several rules "
             "agree; the search itself walks points 0.05 bits apart, where a top-1 test meets more near-ties "
             "(its measured spread on the benchmark's draws 0-4 is in `pareto.md`).", "",
             "| rule | " + " | ".join(f"draw {d}" for d in draws) + " | bits max/min | median test drop |",
             "|---|" + "---:|" * (len(draws) + 2)]
    for rule, fn in RULES.items():
        got = [choose(rule, draws[d]) for d in draws]
        bits = [g["avg_bits"] for g in got]
        drops = [g["test_drop"] for g in got]
        lines.append(f"| `{rule}` | " + " | ".join(f"{g['avg_bits']:.2f} / {g['test_drop']:+.2f}" for g in got)
                     + f" | {max(bits) / min(bits):.2f} | {statistics.median(drops):+.2f} |")
    lines += ["", "Rules (docstrings in `benchmarks/accuracy_mode_rules.py`):", ""]
    lines += [f"- `{rule}`: {(fn.__doc__ or '').strip().splitlines()[0]}" for rule, fn in RULES.items()]
    return "\n".join(lines) + "\n"


# ----- the walk study (accuracy_mode_walk.py): the search's own walk, both KLs ---------------------------------

def _walk_choose(points: list[dict], float_top1: float, kl_key: str, t_init: float = T_INIT, sigmas: float = 2.0,
                 n: int = 2000, **options) -> int:
    """:func:`choose_point` on recorded walk points (``kl_key``: ``kl_sens`` or ``kl_calib``; ``options``:
    its ``anchor_factor`` / ``n_anchors``)."""

    # KL rounded as the search rounds it (passes/sensitivity.py: 5 significant digits)
    def value_of(i, threshold=None):
        v = points[i]["calib_top1"]
        return v, threshold is None or v >= threshold

    chosen, _ = choose_point(list(range(len(points))), value_of, lambda i: float(f"{points[i][kl_key]:.5g}"),
                             float_top1, t_init, n, sigmas, **options)
    return chosen


WALK_RULES = {
    "kl on 512 sensitivity images (search before)": dict(kl_key="kl_sens", anchor_factor=4.0),
    "kl on all calibration images": dict(kl_key="kl_calib", anchor_factor=4.0),
    "kl on all, 5 anchors": dict(kl_key="kl_calib", anchor_factor=4.0, n_anchors=5),
    "kl on all, anchors within 2 t_init": dict(kl_key="kl_calib", anchor_factor=2.0),
    "kl on all, anchors within 6 t_init": dict(kl_key="kl_calib", anchor_factor=6.0),
    "kl on all, anchors within 8 t_init (search now)": dict(kl_key="kl_calib", anchor_factor=8.0),
    "kl on all, anchors within 8 t_init, 5 anchors": dict(kl_key="kl_calib", anchor_factor=8.0, n_anchors=5),
    "kl on all, anchors within 12 t_init": dict(kl_key="kl_calib", anchor_factor=12.0),
    "kl on 512, anchors within 8 t_init": dict(kl_key="kl_sens", anchor_factor=8.0),
}


def walk_report(data: dict) -> str:
    """Markdown: per walk rule, average bits / test drop on every draw, the spread and the median drop."""
    draws = data["draws"]
    lines = ["# Accuracy mode on the search's walk: rules replayed on recorded calibration draws", "",
             "Generated by `python benchmarks/accuracy_mode_walk.py --analyse` from `accuracy_mode_walk.json` "
             "(measured by `OMP_NUM_THREADS=2 python benchmarks/accuracy_mode_walk.py --threads 2`). "
             f"{data['model']}, calibration draws {', '.join(draws)} (2,000 training images each); every "
             f"point of the walk accuracy mode builds ({data['walk_step']} average bits apart) up to the "
             f"recorded maximum; t_init {T_INIT}. Each cell: average bits / held-out test drop in points.", "",
             "| rule | " + " | ".join(f"draw {d}" for d in draws) + " | bits max/min | median test drop |",
             "|---|" + "---:|" * (len(draws) + 2)]
    for rule, kw in WALK_RULES.items():
        got = []
        for d in draws:
            pts, f = draws[d]["points"], draws[d]["float"]
            p = pts[_walk_choose(pts, f["calib_top1"], **kw)]
            got.append((p["avg_bits"], f["test_top1"] - p["test_top1"]))
        bits = [b for b, _ in got]
        lines.append(f"| {rule} | " + " | ".join(f"{b:.2f} / {t:+.2f}" for b, t in got)
                     + f" | {max(bits) / min(bits):.2f} | {statistics.median(t for _, t in got):+.2f} |")
    return "\n".join(lines) + "\n"


def walk_resampled(data: dict, arrays: dict, rules: dict | None = None, replicas: int = 200, seed: int = 0) -> str:
    """Markdown: each rule on ``replicas`` bootstrap resamples of every draw's calibration images.

    ``arrays[d]`` holds the per-image arrays ``accuracy_mode_walk.py`` caches for draw ``d``. A
    resample redraws the oracle's 2,000 images with replacement and keeps the draw's frontier
    (its sensitivities came from the draw's own images), so it measures the noise the rule adds
    on top of the frontier's. The spread column is the median, over ``replicas`` sets of five
    resamples (each from a random draw), of the five chosen sizes' max/min, and how often it
    was <= 1.15 (issue 15's target). ``kl_sens`` cannot be resampled (the sensitivity images are
    not recorded): rules on it are left out.
    """
    import random

    import torch

    rules = {k: v for k, v in (rules or WALK_RULES).items() if v.get("kl_key") != "kl_sens"}
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    lines = [f"Each rule on {replicas} bootstrap resamples of every draw's calibration images (as many "
             "images, redrawn with replacement; the draw's frontier kept). The spread columns: over "
             f"{replicas} sets of five resampled draws (each from a random draw, so a set may repeat a "
             "draw), the median of max/min and how often it was <= 1.15.", "",
             "| rule | median bits | 10-90% bits | median test drop | 5-draw max/min (median) | P(max/min <= 1.15) |",
             "|---|---:|---:|---:|---:|---:|"]
    for rule, kw in rules.items():
        per_draw = {}
        for d, draw in data["draws"].items():
            a = arrays[d]
            fc = a["calib_float_correct"].double()
            cc = torch.stack([p["calib_correct"] for p in a["points"]]).double()
            kc = torch.stack([p["calib_kl"] for p in a["points"]]).double()
            n = len(fc)
            got = []
            for _ in range(replicas):
                idx = torch.randint(n, (n,), generator=gen)
                f = 100.0 * float(fc[idx].mean())
                top1 = (100.0 * cc[:, idx].mean(1)).tolist()
                kl = kc[:, idx].mean(1).tolist()
                pts = [dict(p, calib_top1=t, kl_calib=k) for p, t, k in zip(draw["points"], top1, kl)]
                p = pts[_walk_choose(pts, f, **kw)]
                got.append((p["avg_bits"], draw["float"]["test_top1"] - p["test_top1"]))
            per_draw[d] = got
        pooled = sorted(b for g in per_draw.values() for b, _ in g)
        drops = [t for g in per_draw.values() for _, t in g]
        ratios = []
        for _ in range(replicas):
            five = [rng.choice(per_draw[rng.choice(list(per_draw))])[0] for _ in range(5)]
            ratios.append(max(five) / min(five))
        q = lambda xs, f: xs[min(len(xs) - 1, int(f * len(xs)))]  # noqa: E731
        lines.append(f"| {rule} | {statistics.median(pooled):.2f} | {q(pooled, 0.1):.2f}-{q(pooled, 0.9):.2f} | "
                     f"{statistics.median(drops):+.2f} | {statistics.median(ratios):.2f} | "
                     f"{sum(r <= 1.15 for r in ratios) / len(ratios):.0%} |")
    return "\n".join(lines) + "\n"
