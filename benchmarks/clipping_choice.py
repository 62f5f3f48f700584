"""Which scale choice should be the default? Held-out accuracy of min/max vs weight-MSE clipping.

Run: python benchmarks/clipping_choice.py [--model resnet18] [--bits 8 6 5 4 3 2]
(needs ../shared/data and a checkpoint from examples/eurosat/train.py).
Every layer at the same width, per-channel affine grid; only ``clipping`` differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxquant  # noqa: E402
from examples.eurosat.common import load_trained  # noqa: E402
from fxquant.data.eurosat import eurosat_splits  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 5, 4, 3, 2])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, meta = load_trained(args.model)
    splits = eurosat_splits(seed=meta.get("split_seed", 0))
    test = fxquant.AccuracyOracle(splits.test_loader())
    print(f"# {args.model} on EuroSAT, held-out test ({len(splits.test_idx)} images); float {test(model):.2f}%")
    print("| bits | min/max | weight-MSE clipping |")
    print("|---:|---:|---:|")
    for bits in args.bits:
        accs = [test(fxquant.quantize(model, bits, config=fxquant.QuantConfig(clipping=c))) for c in ("minmax", "mse")]
        print(f"| {bits} | {accs[0]:.2f}% | {accs[1]:.2f}% |", flush=True)


if __name__ == "__main__":
    main()
