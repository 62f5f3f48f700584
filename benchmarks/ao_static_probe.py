"""Where torch.ao's FX static int8 recipe loses accuracy: the default recipe, then with one part left float.

A side probe for the peers table (docs/benchmarks.md): on the EuroSAT ResNet50 the
default x86 recipe keeps about half of float's accuracy. Each row prepares, calibrates
(the peers run's 2,000 calibration images) and converts a fresh copy of the model
with ``get_default_qconfig_mapping(engine)``, optionally with ``set_module_name(part,
None)`` for one part, and reports top-1 on a seeded subset of the held-out test split.

Run (needs ../shared/data and the checkpoint from examples/eurosat/train.py)::

    OMP_NUM_THREADS=2 python benchmarks/ao_static_probe.py --model resnet50 --threads 2

Prints the rows and writes them to ``docs/results/ao_static_probe.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peer_tools import ao_fx_static_int8  # noqa: E402
from benchmarks.peers import accuracy  # noqa: E402
from examples.eurosat.common import checkpoint_path, load_trained  # noqa: E402
from fxquant.data.eurosat import eurosat_splits  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "ao_static_probe.md"

# (engine, part left float or None)
ROWS = (("x86", None), ("fbgemm", None), ("x86", "conv1"), ("x86", "layer4"), ("x86", "fc"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--model", default="resnet50", choices=["resnet18", "resnet50"])
    p.add_argument("--test-size", type=int, default=1000, help="seeded subset of the test split (default 1000)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_trained(args.model, path=checkpoint_path(args.model))
    splits = eurosat_splits(None, seed=meta.get("split_seed", 0))
    gen = torch.Generator().manual_seed(0)
    test_idx = splits.test_idx[torch.randperm(splits.test_idx.numel(), generator=gen)[:args.test_size]]
    test = list(splits.loader(test_idx.sort().values))
    calib = list(splits.calib_loader())
    acc = accuracy(model, test)
    print(f"{args.model}: {len(test_idx)} test images, float32 top-1 {acc:.1f}%", flush=True)
    lines = [f"# torch.ao FX static int8 on the EuroSAT {args.model}: where it loses", "",
             f"`OMP_NUM_THREADS={torch.get_num_threads()} python benchmarks/ao_static_probe.py --model {args.model} "
             f"--threads {torch.get_num_threads()}`; torch {torch.__version__}, {platform.machine()}, "
             f"{datetime.date.today()}. Top-1 on {len(test_idx)} seeded held-out test images; observers on the "
             f"{sum(len(y) for _, y in calib)} calibration images of the peers table.", "",
             "| recipe | left float | top-1 % |", "|---|---|---:|", f"| float32 | everything | {acc:.1f} |"]
    for engine, part in ROWS:
        q = ao_fx_static_int8(model, calib, torch.randn(2, 3, 64, 64), engine, part)
        got = accuracy(q, test)
        print(f"{engine:7s} {(part or 'nothing') + ' left float':22s} {got:.1f}%", flush=True)
        lines.append(f"| `get_default_qconfig_mapping(\"{engine}\")` | {f'`{part}`' if part else 'nothing'} | {got:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
