"""Compress a EuroSAT-trained classifier with the accuracy oracle split over several processes.

    python examples/eurosat/train.py --model resnet18          # once: trains and caches a checkpoint
    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        examples/distributed_compress.py --model resnet18 [--out r18.fxq] [--report r18.json]

(``torchrun`` is the same launcher as ``python -m torch.distributed.run``.) Every
process loads the same model and the same calibration images (2,000, carved out
of the training split); ``fxquant.compress`` sees the initialised process group,
scores each rank's share of the batches and sums the counts, so every rank ends
with the same bit-widths as a single process would. Only rank 0 logs, prints and
writes files. Backend: ``nccl`` when every rank has a GPU, ``gloo`` otherwise
(``--backend`` overrides); on GPUs the model and batches go to ``cuda:LOCAL_RANK``.
Run without the launcher it is simply a single-process run. (Initialising the group is
optional: under torchrun ``fxquant.compress`` starts one itself and destroys it before
returning; this script does it to pick the backend and to keep the group for its
barrier. Without it, use ``fxquant.engine.distributed.is_main_process()`` to write once.)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxquant  # noqa: E402
from examples.eurosat.common import load_trained  # noqa: E402
from fxquant.data.eurosat import eurosat_available, eurosat_splits  # noqa: E402

def _start(backend: str | None) -> torch.device:
    """Join the process group torchrun describes (if any); the device this rank computes on."""
    if "RANK" not in os.environ:
        return torch.device("cpu")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    return device


def _outputs(args, model, qmodel, splits, device) -> None:
    """Rank 0 only: the report, the held-out test accuracy and the files."""
    report = fxquant.report(qmodel)
    print(report.to_text())
    result = qmodel.meta["fxquant"]
    processes = dist.get_world_size() if dist.is_initialized() else 1
    print(f"\nsearch: {result.seconds:.1f} s on {processes} process(es) x {torch.get_num_threads()} "
          f"thread(s), {result.oracle_calls} oracle calls, {result.layer_forwards:,} layer-forwards")
    if not args.skip_test:
        test = fxquant.AccuracyOracle([(x.to(device), y.to(device)) for x, y in splits.test_loader()])
        with torch.no_grad():
            float_acc, q_acc = test(model), test(qmodel)
        print(f"held-out test accuracy: float {float_acc:.2f}% -> compressed {q_acc:.2f}% "
              f"at {report.average_bits:.2f} average bits ({len(splits.test_idx)} images)")
    if args.report:
        args.report.write_text(report.to_json())
    if args.out:
        fxquant.save(qmodel.cpu(), args.out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--checkpoint", type=Path, help="default: the cache path train.py writes")
    parser.add_argument("--root", help="EuroSAT root (default ../shared/data)")
    parser.add_argument("--method", default="auto", choices=["auto", "sensitivity", "paper"])
    parser.add_argument("--margin", choices=["adaptive", "fixed"], help="--method paper only (default adaptive)")
    parser.add_argument("--t-init", type=float, default=0.5)
    parser.add_argument("--calib-size", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256, help="calibration batch size: each rank "
                        "scores whole batches, so keep at least 2 batches per process")
    parser.add_argument("--candidates", type=int, nargs="+", default=list(range(1, 9)), help="bit-widths")
    parser.add_argument("--skip-test", action="store_true", help="no held-out test accuracy at the end")
    parser.add_argument("--backend", choices=["gloo", "nccl"], help="default: nccl with GPUs, else gloo")
    parser.add_argument("--out", type=Path, help="write the compressed model (.fxq) here (rank 0)")
    parser.add_argument("--report", type=Path, help="write the report JSON here (rank 0)")
    args = parser.parse_args(argv)
    if not eurosat_available(args.root):
        parser.error("EuroSAT not found: pass --root or set FXQUANT_EUROSAT_ROOT")
    device = _start(args.backend)
    main_rank = not dist.is_initialized() or dist.get_rank() == 0
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING, format="%(message)s")
    try:
        model, meta = load_trained(args.model, path=args.checkpoint)
        splits = eurosat_splits(args.root, seed=meta.get("split_seed", 0), calib_size=args.calib_size)
        calib = [(x.to(device), y.to(device)) for x, y in splits.calib_loader(batch_size=args.batch_size)]
        # The same model and the same full calibration list on every rank: fxquant shards it itself.
        stats = [(x.to(device), y.to(device)) for x, y in splits.stats_loader(batch_size=args.batch_size)]
        qmodel = fxquant.compress(model.to(device), calib, stats_loader=stats, method=args.method,
                                  t_init=args.t_init, candidates=tuple(args.candidates),
                                  **({"margin": args.margin} if args.margin else {}))
        if main_rank:
            _outputs(args, model, qmodel, splits, device)
        if dist.is_initialized():
            dist.barrier()  # the others wait for rank 0's test run and files before the group goes
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
