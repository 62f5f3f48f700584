"""Compress a EuroSAT-trained classifier with fxquant and print the report.

    python examples/eurosat/train.py --model resnet18          # once: trains and caches a checkpoint
    python examples/compress_eurosat.py --model resnet18 [--t-init 0.5] [--target-bits B]
    python examples/compress_eurosat.py --model resnet18 --method paper [--margin adaptive|fixed]

The search sees only the calibration images carved out of the training split;
the held-out test split (20%, stratified, seed 0) is used once at the end to
report float vs compressed test accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxquant  # noqa: E402
from examples.eurosat.common import load_trained  # noqa: E402
from fxquant.data.eurosat import eurosat_available, eurosat_splits  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--checkpoint", type=Path, help="default: the cache path train.py writes")
    parser.add_argument("--root", help="EuroSAT root (default ../shared/data)")
    parser.add_argument("--method", default="auto", choices=["auto", "sensitivity", "paper"],
                        help="the sensitivity search (auto, the default) or the paper's greedy")
    parser.add_argument("--target-bits", type=float, help="budget mode: eq. 5 average bits <= B")
    parser.add_argument("--t-init", type=float, default=0.5,
                        help="allowed calibration accuracy drop, points (--method paper: eq. 4's T_init)")
    parser.add_argument("--margin", choices=["adaptive", "fixed"], help="--method paper only (default adaptive)")
    parser.add_argument("--importance-scale", choices=["none", "max"],
                        help="--method paper only: eq. 4 with Importance as is (paper, literal, the default) "
                             "or divided by its maximum")
    parser.add_argument("--calib-size", type=int, default=2000)
    parser.add_argument("--report", type=Path, help="also write the report JSON here")
    args = parser.parse_args(argv)
    if not eurosat_available(args.root):
        parser.error("EuroSAT not found: pass --root or set FXQUANT_EUROSAT_ROOT")
    model, meta = load_trained(args.model, path=args.checkpoint)
    splits = eurosat_splits(args.root, seed=meta.get("split_seed", 0), calib_size=args.calib_size)
    # GPTQ statistics from other training images: the search must not score the images they fit.
    paper_options = {k: v for k, v in (("margin", args.margin), ("importance_scale", args.importance_scale))
                     if v is not None}  # given without --method paper: SearchConfig says so
    qmodel = fxquant.compress(model, splits.calib_loader(), stats_loader=splits.stats_loader(), method=args.method,
                              t_init=args.t_init, target_bits=args.target_bits, **paper_options)
    report = fxquant.report(qmodel)
    print(report.to_text())
    test = fxquant.AccuracyOracle(splits.test_loader())
    with torch.no_grad():
        float_acc, q_acc = test(model), test(qmodel)
    print(f"\nheld-out test accuracy: float {float_acc:.2f}% -> compressed {q_acc:.2f}% "
          f"at {report.average_bits:.2f} average bits ({len(splits.test_idx)} images)")
    if args.report:
        args.report.write_text(report.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
