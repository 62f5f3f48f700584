"""What data-aware rounding costs the search: nearest rounding vs GPTQ + bias correction.

Run (needs ../shared/data and a checkpoint from examples/eurosat/train.py):
    python benchmarks/data_aware_cost.py [--model resnet18] [--threads 2]

Both runs are the same search (``--method``, default ``paper``: the adaptive
greedy search that was fxquant's default when this was measured; ``sensitivity``
for today's default) with fast evaluation on the same 2,000 calibration images
from the training split; only ``quant`` differs:
``QuantConfig(rounding="nearest", bias_correction=False)`` vs the default
``QuantConfig()`` (GPTQ + bias correction). Reports the search's wall time, the
part spent measuring input statistics, oracle calls, average bits and held-out
test accuracy, and writes docs/results/data_aware_cost.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxquant  # noqa: E402
from fxquant import passes  # noqa: E402
from examples.eurosat.common import load_trained  # noqa: E402
from fxquant.core.calibration import calibration_inputs  # noqa: E402
from fxquant.data.eurosat import eurosat_splits  # noqa: E402
from fxquant.passes.calibrate import LayerQuantizer  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "results"
QUANTIZERS = {
    "nearest": fxquant.QuantConfig(rounding="nearest", bias_correction=False),
    "gptq+bc (default)": fxquant.QuantConfig(),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--calib-size", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--method", choices=("paper", "sensitivity"), default="paper",
                        help="the search both quantizers run (default: paper, as in the committed result)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, meta = load_trained(args.model)
    splits = eurosat_splits(seed=meta.get("split_seed", 0), calib_size=args.calib_size)
    calib = list(splits.calib_loader(batch_size=args.batch_size))
    stats = list(splits.stats_loader(batch_size=args.batch_size))  # images the search does not score
    test = fxquant.AccuracyOracle(splits.test_loader())
    runs = {}
    for label, quant in QUANTIZERS.items():
        # The statistics step on its own, as compress runs it (same inputs, same layers).
        gm = passes.trace(model)
        resolved = quant.data_aware(True)
        inputs = calibration_inputs(stats, resolved.calib_samples) if resolved.needs_data else None
        stats_s = LayerQuantizer(gm, passes.find_layers(gm), resolved, inputs).setup_seconds
        t0 = time.perf_counter()
        q = fxquant.compress(model, calib, stats_loader=stats, quant=quant, method=args.method, verbose=False)
        wall = time.perf_counter() - t0
        result = q.meta["fxquant"]
        with torch.no_grad():
            acc = test(q)
        runs[label] = {"wall_s": round(wall, 1), "search_s": round(result.seconds, 1),
                       "statistics_s": round(stats_s, 1), "oracle_calls": result.oracle_calls,
                       "average_bits": round(fxquant.report(q).average_bits, 3),
                       "test_accuracy": round(acc, 2), "calib_accuracy": round(result.final_value, 2)}
        print(label, runs[label], flush=True)
    base, aware = runs["nearest"], runs["gptq+bc (default)"]
    summary = {
        "command": "python benchmarks/data_aware_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model, "method": args.method, "calibration_images": args.calib_size, "threads": args.threads,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "runs": runs, "slowdown": round(aware["wall_s"] / base["wall_s"], 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_aware_cost.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# Search cost of data-aware rounding ({args.model}, EuroSAT)", "",
        f"`{summary['command']}` — {args.method} search, {args.threads} thread(s), torch {torch.__version__}, "
        f"{args.calib_size} calibration images from the training split; held-out test split "
        f"({test.total} images) for accuracy.", "",
        "| quantizer | search wall (s) | of which input statistics (s) | oracle calls | avg bits "
        "| calib acc | test acc |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in runs.items():
        lines.append(f"| {label} | {r['wall_s']} | {r['statistics_s']} | {r['oracle_calls']} | "
                     f"{r['average_bits']} | {r['calib_accuracy']} | {r['test_accuracy']} |")
    lines += ["", f"Data-aware rounding makes the search **{summary['slowdown']}×** as long "
              "(statistics once, GPTQ factorisation once per layer, rounding once per tried width)."]
    (args.out / "data_aware_cost.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
