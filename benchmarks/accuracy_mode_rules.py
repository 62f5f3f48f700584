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

__all__ = ["RULES", "choose", "report"]

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
             "calibration images, unrounded; the search computes it on its 512 sensitivity images. "
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
