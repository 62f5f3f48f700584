"""Write ``eurosat.md`` and the accuracy-vs-bits figure from the per-model Table 1 JSONs.

    python examples/eurosat/table1_report.py [--results docs/results]

Pure: reads ``<results>/eurosat_<model>.json`` (written by ``table1.py``), writes
``<results>/eurosat.md`` and ``<results>/img/eurosat_acc_vs_bits.png``. Every
verdict in the targets section is computed from the JSON; the paper's numbers
come from ``paper_table1.py``. Models without a JSON are left out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from examples.eurosat import layer_bits  # noqa: E402
from examples.eurosat.paper_table1 import PAPER_MODEL, PAPER_PROTOCOL, paper_row  # noqa: E402

__all__ = ["SCHEMA", "FIGURE", "load_results", "evaluate_targets", "render_markdown", "plot", "write_report"]

SCHEMA = "fxquant.eurosat_table1/1"
FIGURE = Path("img") / "eurosat_acc_vs_bits.png"
MODEL_ORDER = ("resnet18", "resnet50", "vgg11_bn", "vgg19_bn")
NAMES = {"resnet18": "ResNet18", "resnet50": "ResNet50", "vgg11_bn": "VGG11-BN", "vgg19_bn": "VGG19-BN"}
QUANTIZERS = {"paper": "paper-faithful quantizer", "default": "fxquant default quantizer"}
COLORS = {"paper": "#1f77b4", "default": "#d62728", "published": "#7f7f7f"}
ABLATION_METHODS = {"nearest": "nearest", "bc": "bias corr. only", "gptq": "GPTQ only", "gptq_bc": "GPTQ + bias corr."}
FIXED4_MAX_DROP = 1.0
FIXED4_MODELS = ("resnet18", "resnet50")
# The adaptive search's target per model: (max average bits, max drop in points). VGG19's is the
# paper's own result (1.44 bits at +-0) with 0.3 points of slack (issue 17).
SEARCH_TARGETS = {"resnet18": (3.4, 0.5), "resnet50": (3.4, 0.5), "vgg19_bn": (1.44, 0.3)}
TARGET_MODELS = tuple(dict.fromkeys((*FIXED4_MODELS, *SEARCH_TARGETS)))
SEARCH_KEYS = ("search_fixed", "search_adaptive")  # the paper's greedy
ROBUST_PREFIXES = ("accuracy", "target")  # fxquant's sensitivity search: accuracy mode, target_bits rows
MB = 1e6  # the issue asks for MB; bytes are exact in the JSON


# ---- loading and verdicts (pure) -----------------------------------------------------

def load_results(results_dir: Path) -> dict[str, dict]:
    """``{model: data}`` for every ``eurosat_*.json`` in ``results_dir`` written by table1.py."""
    found = {}
    for path in sorted(Path(results_dir).glob("eurosat_*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("schema") == SCHEMA:  # other eurosat_*.json are search reports
            found[data["model"]] = data
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _acc(data: dict, key: str) -> float | None:
    row = data.get("rows", {}).get(key)
    return None if row is None else row["test_acc"]


def evaluate_targets(results: dict[str, dict]) -> list[dict]:
    """The issue's accuracy targets, one verdict per (target, model): met, missed or not run."""
    out = []
    for model in TARGET_MODELS:
        data = results.get(model, {})
        rows, float_acc = data.get("rows", {}), _acc(data, "float")
        paper_float, paper4 = paper_row(model, "float"), paper_row(model, "fixed4")
        if model in FIXED4_MODELS:
            out.append(_fixed4_verdict(model, rows.get("default/fixed4"), float_acc, paper_float, paper4))
        if model in SEARCH_TARGETS:
            out.append(_search_verdict(model, rows.get("default/search_adaptive"), float_acc, paper_float))
    return out


def _fixed4_verdict(model: str, row: dict | None, float_acc: float | None, paper_float, paper4) -> dict:
    paper_drop = None if paper_float is None or paper4 is None else paper4[0] - paper_float[0]
    verdict = {"target": "fixed4", "model": model,
               "goal": f"default quantizer, fixed 4-bit within {FIXED4_MAX_DROP:.1f} point of float",
               "paper": None if paper_drop is None else f"{paper_drop:+.1f} points"}
    if row is None or float_acc is None:
        verdict.update(status="not run", detail="")
    else:
        drop = row["test_acc"] - float_acc
        ok = drop >= -FIXED4_MAX_DROP
        verdict.update(status="met" if ok else "missed",
                       detail=f"{row['test_acc']:.2f}% vs float {float_acc:.2f}%: {drop:+.2f} points"
                       + ("" if ok else f", {-drop - FIXED4_MAX_DROP:.2f} points beyond the allowed "
                                        f"{FIXED4_MAX_DROP:.1f}"))
    return verdict


def _search_verdict(model: str, row: dict | None, float_acc: float | None, paper_float) -> dict:
    max_bits, max_drop = SEARCH_TARGETS[model]
    paper_search = paper_row(model, "search_adaptive")
    verdict = {"target": "adaptive", "model": model,
               "goal": f"default quantizer, adaptive search: <= {max_bits} average bits "
                       f"at >= float - {max_drop} points",
               "paper": None if paper_search is None or paper_float is None else
               f"{paper_search[1]:.2f} bits, {paper_search[0] - paper_float[0]:+.2f} points"}
    if row is None or float_acc is None:
        verdict.update(status="not run", detail="")
    else:
        drop = row["test_acc"] - float_acc
        misses = []
        if row["avg_bits"] > max_bits:
            misses.append(f"{row['avg_bits']:.2f} bits is {row['avg_bits'] - max_bits:.2f} above {max_bits}")
        if drop < -max_drop:
            misses.append(f"accuracy is {-drop - max_drop:.2f} points below float - {max_drop}")
        detail = f"{row['avg_bits']:.2f} bits, {row['test_acc']:.2f}% vs float {float_acc:.2f}% ({drop:+.2f} points)"
        verdict.update(status="missed" if misses else "met", detail="; ".join([detail, *misses]))
    return verdict


# ---- markdown ------------------------------------------------------------------------

def describe_quant(q: dict | None) -> str:
    """Readable quantizer settings from a row's ``quant`` dict."""
    if not q:
        return "float"
    parts = [q.get("granularity", "?").replace("_", "-"), q.get("scheme", "affine"),
             "min/max" if q.get("clipping") == "minmax" else f"{q.get('clipping')} clipping"]
    rounding = q.get("rounding", "nearest")
    parts.append("GPTQ rounding (auto: data given)" if rounding == "auto" else f"{rounding} rounding")
    parts.append("bias correction" if q.get("bias_correction", False) else "no bias correction")
    if (rounding != "nearest" or q.get("bias_correction")) and q.get("calib_samples"):
        parts.append(f"statistics from up to {q['calib_samples']} images (see above)")
    return ", ".join(parts)


def _cell_acc(row: dict | None, float_acc: float | None) -> str:
    if row is None:
        return "–"
    if float_acc is None or row.get("kind") == "float":
        return f"{row['test_acc']:.2f}"
    return f"{row['test_acc']:.2f} ({row['test_acc'] - float_acc:+.2f})"


def _mb(row: dict | None) -> str:
    if row is None or "packed_bytes" not in row:
        return "–"
    return f"{(row['packed_bytes'] + row['grid_bytes']) / MB:.2f}"


def _paper_cell(model: str, key: str) -> str:
    """The paper's accuracy with its drop from the paper's float (the comparable part), and bits for searches."""
    paper, pfloat = paper_row(model, key), paper_row(model, "float")
    if paper is None:
        return "–"
    if key == "float":
        return f"{paper[0]:.2f}"
    cell = f"{paper[0]:.2f} ({paper[0] - pfloat[0]:+.2f})"
    return cell if key.startswith("fixed") else f"{cell}, {paper[1]:.2f} bits"


def _num(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _row_label(key: str) -> str:
    if key == "float":
        return "float32"
    if key.startswith("fixed"):
        return f"fixed {key[5:]}-bit"
    if key == "accuracy":
        return "fxquant search, accuracy mode T_init = 0.5"
    if key.startswith("target"):
        return f"fxquant search, target_bits = {key[6:]}"
    return {"search_fixed": "search, fixed T_margin = 0.5", "search_adaptive": "search, adaptive T_init = 0.5"}[key]


def _search_label(key: str) -> str:
    """Short column/row title of a search row key (without the quantizer prefix)."""
    if key.startswith("search_"):
        return f"{key[7:]} margin"
    return "accuracy mode" if key == "accuracy" else f"target {key[6:]} bits"


def _search_keys(rows: dict) -> list[str]:
    """Search row keys (no quantizer prefix) in display order: the paper's two, then fxquant's."""
    robust = sorted({k.split("/", 1)[1] for k in rows if "/" in k and k.split("/", 1)[1].startswith(ROBUST_PREFIXES)},
                    key=lambda k: (k != "accuracy", k))
    return [*SEARCH_KEYS, *robust]


def _quant_line(data: dict, group: str) -> str:
    quants = [json.dumps(r["quant"], sort_keys=True) for r in data["rows"].values()
              if r.get("group") == group and r.get("quant")]
    if not quants:
        return ""
    common = Counter(quants).most_common()
    text = describe_quant(json.loads(common[0][0]))
    if len(common) > 1:
        text += f" (**{sum(n for _, n in common[1:])} row(s) computed with other settings**; rerun them)"
    return f"- {QUANTIZERS[group]}: {text}"


def _deviations(training: dict) -> list[str]:
    hp, p = training.get("hparams", {}), PAPER_PROTOCOL
    out = [f"epochs {training.get('epochs', hp.get('epochs'))} (paper {p['epochs']})",
           f"batch size {hp.get('batch_size')} (paper {p['batch_size']})",
           f"{hp.get('optimizer', 'SGD')}, peak lr {hp.get('lr')} with {hp.get('schedule', '?')} "
           f"(paper: {p['optimizer']}, lr {p['lr']}, {p['schedule']})",
           f"weight decay {hp.get('weight_decay')} (paper {p['weight_decay']:g})",
           f"augmentation: {hp.get('augmentation', '?')} (paper: {p['augmentation']})",
           f"RGB EuroSAT, 3 bands (paper: {p['bands']})"]
    return out


def _model_section(model: str, data: dict) -> list[str]:
    rows, setup, training = data.get("rows", {}), data.get("setup", {}), data.get("training", {})
    float_acc = _acc(data, "float")
    name = NAMES.get(model, model)
    pcol = PAPER_MODEL.get(model)
    lines = [f"## {name}", ""]
    if setup.get("quick"):
        lines += ["**Quick pipeline check, not a result:** "
                  f"{setup.get('n_test')} test and {setup.get('n_calib')} calibration images.", ""]
    ckpt_acc = training.get("test_acc")
    lines.append(f"Held-out test split: {setup.get('n_test')} images ({setup.get('test_fraction', 0.2):.0%}, "
                 f"stratified, split seed {setup.get('split_seed')}); the search scores "
                 f"{setup.get('n_calib')} calibration images from the training split"
                 + (f", and data-aware rounding takes its statistics from {setup['n_stats']} other training "
                    "images (disjoint from both)" if setup.get("n_stats") else "")
                 + ". Float test accuracy "
                 + (f"{float_acc:.2f}%" if float_acc is not None else "not measured yet")
                 + (f" (checkpoint summary: {100 * ckpt_acc:.2f}%)" if ckpt_acc is not None else "")
                 + (f"; the paper's {pcol}: {paper_row(model, 'float')[0]:.2f}%." if pcol else "; not in the paper."))
    lines.append("")
    if training:
        lines.append(f"Training (from the checkpoint summary): {training.get('n_train')} training images, "
                     f"{training.get('train_time_s', 0) / 60:.0f} min on {training.get('threads')} thread(s), "
                     f"torch {training.get('torch_version')}. Deviations from the paper's protocol:")
        lines += [f"- {d}" for d in _deviations(training)]
        lines.append("")
    lines += ["Quantizers:"] + [q for q in (_quant_line(data, g) for g in QUANTIZERS) if q] + [""]

    keys = ["float"] + [f"fixed{b}" for b in range(8, 0, -1)] + _search_keys(rows)
    head = "| row | paper" + (f" ({pcol})" if pcol else "") + ": acc. (Δ its float) | "
    head += " | ".join(f"{QUANTIZERS[g]}: test acc. (Δ float) | avg bits | MB" for g in QUANTIZERS) + " |"
    lines += ["Test accuracy in %, Δ in points, average bits by eq. 5, MB = 10^6 bytes of packed integer "
              "weights plus scales and zero points (biases and batch norm stay float, not counted).", "",
              head, "|---|---:|" + "---:|---:|---:|" * len(QUANTIZERS)]
    float32_ref = next((r["weight_float32_bytes"] for r in rows.values() if "weight_float32_bytes" in r), None)
    for key in keys:
        group_rows = {g: rows.get("float" if key == "float" else f"{g}/{key}") for g in QUANTIZERS}
        if key != "float" and not any(group_rows.values()):
            continue
        if key == "float" and group_rows["paper"] is None and paper_row(model, key) is None:
            continue
        pcell = _paper_cell(model, key)
        cells = []
        for g, row in group_rows.items():
            if key == "float":
                size = "–" if float32_ref is None else f"{float32_ref / MB:.2f} (float32)"
                cells += [_cell_acc(row, float_acc), "32", size]
            else:
                cells += [_cell_acc(row, float_acc), "–" if row is None else f"{row['avg_bits']:.2f}", _mb(row)]
        lines.append(f"| {_row_label(key)} | {pcell} | " + " | ".join(cells) + " |")
    lines.append("")

    search = [(g, _search_label(k), rows.get(f"{g}/{k}")) for g in QUANTIZERS for k in _search_keys(rows)]
    if any(r for _, _, r in search):
        lines += ["Search cost (calibration accuracy in %: float / all 8-bit / final):", "",
                  "| search | quantizer | search s | oracle calls | layer-forwards | compress wall s "
                  "| calib. acc. | threads |", "|---|---|---:|---:|---:|---:|---|---:|"]
        for g, m, r in search:
            if r is None:
                continue
            calib = "/".join(f"{r[k]:.2f}" for k in ("calib_float", "calib_baseline", "calib_final")
                             if r.get(k) is not None)
            lines.append(f"| {m} | {QUANTIZERS[g]} | {_num(r.get('search_seconds'), '.0f')} | "
                         f"{_num(r.get('oracle_calls'), 'd')} | {_num(r.get('layer_forwards'), ',')} | "
                         f"{_num(r.get('wall_seconds'), '.0f')} | {calib} | {_num(r.get('threads'), 'd')} |")
        lines.append("")

    lines += layer_bits.section(rows, {f"{g}/{k}": f"{_search_label(k).replace(' margin', '')}, {g}"
                                       for g in QUANTIZERS for k in _search_keys(rows)})

    abl = {k: v for k, v in rows.items() if v.get("group") == "ablation"}
    pending = data.get("pending", {})
    if abl or any(k.startswith("ablation/") for k in pending):
        lines += ["Rounding ablation (issue 5): per-channel affine min/max grid, every layer at the same width; "
                  "test accuracy in % (Δ float).", "",
                  "| bits | paper (fixed) | " + " | ".join(ABLATION_METHODS.values()) + " |",
                  "|---:|---:|" + "---:|" * len(ABLATION_METHODS)]
        for b in range(8, 1, -1):
            cells = []
            for m in ABLATION_METHODS:
                key = f"ablation/{m}/fixed{b}"
                cells.append(_cell_acc(abl[key], float_acc) if key in abl else
                             ("pending" if key in pending else "–"))
            if set(cells) <= {"–"}:
                continue
            lines.append(f"| {b} | {_paper_cell(model, f'fixed{b}')} | " + " | ".join(cells) + " |")
        times = []
        for m, label in ABLATION_METHODS.items():
            ts = [r["wall_seconds"] for k, r in abl.items() if k.startswith(f"ablation/{m}/") and "wall_seconds" in r]
            if ts:
                times.append(f"{label} {statistics.median(ts):.1f} s")
        lines += ["", "Median quantize wall time per row: " + ", ".join(times) + "." if times else ""]
        reasons = sorted({v for k, v in pending.items() if k.startswith("ablation/")})
        if reasons:
            lines.append("Pending: " + "; ".join(reasons) + ".")
        lines.append("")
    notes = data.get("notes") or []
    if notes:
        lines += ["Notes (written by hand, kept in the JSON):", ""] + [f"- {n}" for n in notes] + [""]
    return lines


def _commands(results: dict[str, dict]) -> list[str]:
    out = ["```bash"]
    for model, data in results.items():
        hp = data.get("training", {}).get("hparams", {})
        if hp:
            out.append(f"python examples/eurosat/train.py --model {model} --epochs {hp.get('epochs')} "
                       f"--batch-size {hp.get('batch_size')} --lr {hp.get('lr')} --weight-decay "
                       f"{hp.get('weight_decay')} --seed {hp.get('seed')} --split-seed {hp.get('split_seed')}")
        threads = Counter(r.get("threads") for r in data.get("rows", {}).values() if r.get("threads"))
        n = threads.most_common(1)[0][0] if threads else 1
        quick = " --quick" if data.get("setup", {}).get("quick") else ""
        out.append(f"OMP_NUM_THREADS={n} python examples/eurosat/table1.py --model {model} --threads {n}{quick}")
    out += ["python examples/eurosat/table1.py --report   # this page and the figure, from the JSONs", "```"]
    return out


def render_markdown(results: dict[str, dict], figure: Path | None = FIGURE) -> str:
    lines = ["# EuroSAT: the paper's Table 1, reproduced", "",
             "Generated by `examples/eurosat/table1_report.py` from "
             + ", ".join(f"`eurosat_{m}.json`" for m in results) + "; do not edit by hand. "
             "Paper numbers: Table 1 of Shinde & Vuai (their own training run and test split, so compare "
             "drops from float rather than absolute accuracies).", ""]
    if not results:
        return "\n".join(lines + ["No results yet: run `examples/eurosat/table1.py --model resnet18`.", ""])
    lines += ["## Targets", "", "Computed from the JSON on every regeneration.", "",
              "| target | model | paper | ours | verdict |", "|---|---|---|---|---|"]
    for v in evaluate_targets(results):
        lines.append(f"| {v['goal']} | {NAMES[v['model']]} | {v['paper'] or '–'} | {v['detail'] or '–'} | "
                     f"**{v['status']}** |")
    lines.append("")
    if figure is not None:
        lines += [f"![test accuracy vs average bits]({figure.as_posix()})", "",
                  "*Test accuracy vs average bits (eq. 5): fixed-width curves per quantizer, the paper's two "
                  "searches marked (triangle: fixed margin, star: adaptive), fxquant's sensitivity search "
                  "(open diamond: accuracy mode, open squares: target_bits), the paper's numbers in grey; "
                  "bottom row zoomed to the float accuracy.*", ""]
    for model, data in results.items():
        lines += _model_section(model, data)
    env = Counter((r.get("torch_version"), r.get("cpu"), r.get("git_commit"))
                  for d in results.values() for r in d.get("rows", {}).values()
                  if r.get("torch_version") and "reused_from" not in r)
    lines += ["## Reproduce", "", "One command per model (rows are stored as they finish; rerunning resumes):", ""]
    lines += _commands(results) + [""]
    if env:
        lines += ["Measured with: " + "; ".join(f"torch {t}, {c}, commit {g} ({n} rows)"
                                                for (t, c, g), n in env.most_common()) + ".", ""]
    lines += ["## Figures", ""]
    lines += [f"- `{figure.as_posix()}`: test accuracy vs average bits, all models above." if figure is not None
              else "- none (matplotlib not installed)"]
    return "\n".join(lines) + "\n"


# ---- figure --------------------------------------------------------------------------

def _fixed_curve(rows: dict, prefix: str) -> tuple[list[float], list[float]]:
    pts = sorted((r["avg_bits"], r["test_acc"]) for k, r in rows.items()
                 if k.startswith(prefix) and r.get("kind") == "fixed")
    return [p[0] for p in pts], [p[1] for p in pts]


def plot(results: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    n = max(1, len(results))
    fig, axes = plt.subplots(2, n, figsize=(max(7.0, 5.2 * n), 8), squeeze=False)
    for col, (model, data) in enumerate(results.items()):
        rows, float_acc = data.get("rows", {}), _acc(data, "float")
        pfloat = paper_row(model, "float")
        for ax in axes[:, col]:
            xs = [b for b in range(1, 9) if paper_row(model, f"fixed{b}")]
            if xs:
                ax.plot(xs, [paper_row(model, f"fixed{b}")[0] for b in xs], "--o", color=COLORS["published"],
                        ms=3, lw=1, label="paper, fixed bits")
                for key, marker in (("search_fixed", "^"), ("search_adaptive", "*")):
                    acc, bits = paper_row(model, key)
                    ax.plot([bits], [acc], marker, color=COLORS["published"], ms=9 if marker == "*" else 7,
                            label=f"paper, search ({key[7:]} margin)")
                ax.axhline(pfloat[0], color=COLORS["published"], ls=":", lw=1, label="paper float")
            for g, label in QUANTIZERS.items():
                bx, by = _fixed_curve(rows, f"{g}/fixed")
                if bx:
                    ax.plot(bx, by, "-o", color=COLORS[g], ms=4, label=f"{label}, fixed bits")
                for m, marker in (("fixed", "^"), ("adaptive", "*")):
                    r = rows.get(f"{g}/search_{m}")
                    if r is not None:
                        ax.plot([r["avg_bits"]], [r["test_acc"]], marker, color=COLORS[g], mec="black",
                                ms=11 if marker == "*" else 8, label=f"{label}, search ({m} margin)")
                robust = [(k, rows[f"{g}/{k}"]) for k in _search_keys(rows)[len(SEARCH_KEYS):] if f"{g}/{k}" in rows]
                for k, r in robust:
                    marker = "D" if k == "accuracy" else "s"
                    ax.plot([r["avg_bits"]], [r["test_acc"]], marker, color=COLORS[g], mec="black", mfc="white",
                            ms=7, label=f"{label}, fxquant search ({'accuracy mode' if k == 'accuracy' else 'target_bits'})")
            if float_acc is not None:
                ax.axhline(float_acc, color="black", ls=":", lw=1, label="our float")
            ax.set_xlim(0.5, 8.5)
            ax.set_xlabel("average bits (eq. 5)")
            ax.grid(alpha=0.3)
        top, zoom = axes[0, col], axes[1, col]
        top.set_ylim(0, 100)
        top.set_title(NAMES.get(model, model) + (" (quick check)" if data.get("setup", {}).get("quick") else ""))
        top.set_ylabel("test accuracy (%)")
        ref = [a for a in (float_acc, pfloat[0] if pfloat else None) if a is not None]
        if ref:
            zoom.set_ylim(min(ref) - 8, max(ref) + 1.5)
        zoom.set_ylabel("test accuracy (%), zoomed")
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.tight_layout()
    # Below the panels; bbox_inches="tight" grows the canvas to hold it whatever the model count.
    fig.legend(list(handles.values()), list(handles.keys()), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=2 if n == 1 else 3, fontsize=8, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(results_dir: Path, md_name: str = "eurosat.md") -> str:
    """Write the markdown (and figure, when matplotlib is there); returns a one-line summary."""
    results_dir = Path(results_dir)
    results = load_results(results_dir)
    figure = FIGURE if results else None
    if figure is not None:
        try:
            plot(results, results_dir / figure)
        except ImportError:
            figure = None
    md = results_dir / md_name
    md.write_text(render_markdown(results, figure))
    return f"wrote {md}" + (f" and {results_dir / figure}" if figure is not None else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=_REPO_ROOT / "docs" / "results")
    print(write_report(p.parse_args(argv).results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
