"""``fxquant.plot``: per-layer importance and bits, and accuracy vs average bits (matplotlib).

matplotlib is a dependency of fxquant; :func:`pyplot` still fails with a clear
error in an environment where it was removed, and callers with a long job ahead
(the demo) call it first so they fail before the work, not after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from fxquant.reporting.report import CompressionReport

__all__ = ["plot", "pyplot"]


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend; ImportError saying what to install otherwise."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("fxquant.plot needs matplotlib, a dependency of fxquant that is missing from "
                          "this environment: pip install matplotlib") from e
    return plt


def plot(report: CompressionReport, path: str | Path, *, sweep: Mapping[float, float] | None = None,
         results: Mapping[str, tuple[float, float]] | None = None, title: str | None = None) -> Path:
    """Save a figure (format from ``path``'s suffix, e.g. .png or .svg) and return its path.

    Top: per layer (execution order), importance as bars and the chosen bits as
    markers. Bottom (when ``sweep`` or ``results`` are given, or the report has
    an oracle value): accuracy vs average bits, with ``sweep`` = ``{bits:
    accuracy}`` of fixed-width models drawn as a curve and ``results`` =
    ``{label: (average_bits, accuracy)}`` marked (points above 8 bits, such as
    the float model, as horizontal reference lines); the report's own result is
    marked as "this search" when it has a final oracle value. A report of the
    sensitivity search also draws its frontier: the oracle value of every point
    the search evaluated (accuracy vs average bits, the chosen one starred) and,
    on a right-hand log axis, the summed sensitivity of the frontier allocations.
    """
    plt = pyplot()
    points = dict(results or {})
    if report.final_value is not None and not points:
        points["this search"] = (report.average_bits, report.final_value)
    frontier = list(report.frontier or ())
    two = bool(sweep) or bool(points) or bool(frontier)
    fig, axes = plt.subplots(2 if two else 1, 1, figsize=(max(8, 0.28 * len(report.layers) + 3), 8 if two else 4.5),
                             squeeze=False)
    ax = axes[0][0]
    names = [lay.name for lay in report.layers]
    xs = range(len(names))
    ax.bar(xs, [lay.importance for lay in report.layers], color="#a0529a", label="importance (eq. 3)")
    ax.set_ylabel("importance")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax2 = ax.twinx()
    bits = [32 if lay.bits is None else lay.bits for lay in report.layers]
    ax2.plot(list(xs), bits, "o", color="#f5b26b", markeredgecolor="#333", label="bits", linestyle="none")
    ax2.set_ylabel("bits (float = 32)" if any(lay.bits is None for lay in report.layers) else "bits")
    ax2.set_ylim(0, max(bits) + 1)
    ax.set_title(title or f"{len(names)} layers, average {report.average_bits:.2f} bits (eq. 5)", pad=22)
    (h1, l1), (h2, l2) = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
    # Above the axes: inside, the twin axis' markers would be drawn over it.
    ax2.legend(h1 + h2, l1 + l2, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8,
               numpoints=1, frameon=False)
    if two:
        bx = axes[1][0]
        if sweep:
            ks = sorted(sweep)
            bx.plot(ks, [sweep[k] for k in ks], "-o", color="#7c3f99", label="fixed bit-width")
        for i, (label, (avg, acc)) in enumerate(points.items()):
            if avg > 8:  # e.g. the float model: a reference line, not a point far to the right
                bx.axhline(acc, linestyle="--", color=f"C{i + 1}", label=f"{label} ({avg:g} bits)")
            else:
                bx.plot([avg], [acc], "*", markersize=14, color=f"C{i + 1}", label=label)
        checked = [p for p in frontier if p["value"] is not None]
        if checked:
            bx.plot([p["average_bits"] for p in checked], [p["value"] for p in checked], "s--", color="#2a7f62",
                    markersize=5, label="frontier points the oracle checked")
        if frontier:
            sx = bx.twinx()
            sx.plot([p["average_bits"] for p in frontier], [max(p["sensitivity"], 1e-12) for p in frontier],
                    ".", color="#999999", markersize=4)
            sx.set_yscale("log")
            sx.set_ylabel("frontier: summed sensitivity (KL, nats)", color="#777777")
        bx.set_xlabel("average bits (eq. 5)")
        bx.set_ylabel("accuracy (%)")
        bx.grid(alpha=0.3)
        bx.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
