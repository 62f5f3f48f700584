"""Naive vs fast oracle evaluation in the bit-width search, on a EuroSAT-trained ResNet18.

Run (needs ../shared/data and a checkpoint from examples/eurosat/train.py):
    python examples/eurosat/train.py --model resnet18        # once, ~30 min on 2 cores
    python benchmarks/search_speed.py [--model resnet18] [--calib-size 2000] [--margin adaptive]

Both runs compress the same model on the same 2,000 calibration images (carved
out of the training split) with the same settings; only ``evaluation`` differs.
Reports wall time, oracle calls and layer-forwards (executions of a layer node
on one batch), checks the bit assignments are identical, and writes
docs/results/search_speed.md and .json.
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
from examples.eurosat.common import load_trained  # noqa: E402
from fxquant.data.eurosat import eurosat_splits  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--calib-size", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--margin", default="adaptive", choices=["adaptive", "fixed"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, meta = load_trained(args.model)
    splits = eurosat_splits(seed=meta.get("split_seed", 0), calib_size=args.calib_size)
    calib = list(splits.calib_loader(batch_size=args.batch_size))
    stats = list(splits.stats_loader(batch_size=args.batch_size))
    runs = {}
    for evaluation in ("naive", "fast"):
        t0 = time.perf_counter()
        q = fxquant.compress(model, calib, stats_loader=stats, method="paper", margin=args.margin,
                             evaluation=evaluation, verbose=True)
        wall = time.perf_counter() - t0
        result = q.meta["fxquant"]
        runs[evaluation] = {"wall_s": wall, "search_s": result.seconds, "oracle_calls": result.oracle_calls,
                            "layer_forwards": result.layer_forwards, "bits": result.bits,
                            "final_value": result.final_value,
                            "average_bits": fxquant.report(q).average_bits}
    naive, fast = runs["naive"], runs["fast"]
    identical = naive["bits"] == fast["bits"]
    summary = {
        "command": "python benchmarks/search_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model, "checkpoint_test_acc": meta.get("test_acc"), "calib_images": len(splits.calib_idx),
        "margin": args.margin, "threads": args.threads, "torch": torch.__version__,
        "machine": platform.machine(), "identical_bits": identical,
        "speedup_wall": naive["wall_s"] / fast["wall_s"],
        "layer_forward_ratio": naive["layer_forwards"] / fast["layer_forwards"], "runs": runs,
    }
    lines = [
        f"# Search speed: naive vs fast evaluation ({args.model}, EuroSAT)",
        "",
        f"Command: `{summary['command']}` — torch {torch.__version__}, {args.threads} threads, "
        f"{platform.machine()}; {summary['calib_images']} calibration images from the training split; "
        f"{args.margin} margin, T_init = 0.5, candidates 1..8, sequential strategy.",
        "",
        "| evaluation | wall time (s) | oracle calls | layer-forwards | avg bits | final calib. acc. |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['wall_s']:.1f} | {r['oracle_calls']} | {r['layer_forwards']:,} | "
                     f"{r['average_bits']:.3f} | {r['final_value']:.2f}% |")
    lines += ["", f"Speed-up (wall): **{summary['speedup_wall']:.2f}x**; layer-forwards "
                  f"{summary['layer_forward_ratio']:.2f}x fewer; bit assignments identical: "
                  f"**{'yes' if identical else 'NO'}**.", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search_speed.md").write_text("\n".join(lines))
    (args.out / "search_speed.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
