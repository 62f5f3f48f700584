"""Wall time of the bit-width search: N processes x 1 thread vs 1 process x N threads (ResNet18, EuroSAT).

Run on a quiet machine (needs ../shared/data and a checkpoint from examples/eurosat/train.py):
    python benchmarks/distributed_speed.py [--processes 2] [--repeats 3]

Both configurations compress the same model on the same calibration images
(2,000 from the training split, batches of 256) with the same settings: once
as a single process with ``--processes`` threads, once as ``--processes``
processes with one thread each, launched with ``python -m torch.distributed.run``
(gloo). The workers time ``fxquant.compress`` between two barriers, after the
model and data are loaded; the start-up of each launch (interpreter, torch,
data) is reported separately. With ``--repeats`` the two configurations
alternate and the median counts. The bit assignments must be identical (exit
code 1 otherwise). Writes docs/results/distributed_speed.md and .json.

Smoke test (not a measurement): ``--calib-size 200 --batch-size 50 --candidates 2 8
--single-threads 1 --out /tmp/dspeed``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "docs" / "results"


def _worker(args) -> int:
    """One process of a run: load, time compress between barriers, rank 0 writes the JSON."""
    import torch.distributed as dist

    import fxquant
    from examples.eurosat.common import load_trained
    from fxquant.data.eurosat import eurosat_splits

    torch.set_num_threads(args.threads)
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    try:
        model, meta = load_trained(args.model)
        splits = eurosat_splits(seed=meta.get("split_seed", 0), calib_size=args.calib_size)
        calib = list(splits.calib_loader(batch_size=args.batch_size))
        stats = list(splits.stats_loader(batch_size=args.batch_size))
        if dist.is_initialized():
            dist.barrier()
        t0 = time.perf_counter()
        q = fxquant.compress(model, calib, stats_loader=stats, method="paper", margin=args.margin,
                             candidates=tuple(args.candidates), verbose=args.verbose)
        if dist.is_initialized():
            dist.barrier()
        wall = time.perf_counter() - t0
        r = q.meta["fxquant"]
        if not dist.is_initialized() or dist.get_rank() == 0:
            args.result.write_text(json.dumps({
                "processes": dist.get_world_size() if dist.is_initialized() else 1, "threads": args.threads,
                "search_wall_s": wall, "bits": r.bits, "final_value": r.final_value,
                "baseline_value": r.baseline_value, "oracle_calls": r.oracle_calls,
                "layer_forwards": r.layer_forwards, "average_bits": fxquant.report(q).average_bits,
                "calib_images": len(splits.calib_idx), "batches": len(calib),
                "checkpoint_test_acc": meta.get("test_acc")}))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _launch(args, processes: int, threads: int, result: Path) -> dict:
    """Run one configuration in fresh processes; its JSON plus the launch's wall time."""
    worker = [str(Path(__file__).resolve()), "--worker", "--threads", str(threads), "--result", str(result),
              "--model", args.model, "--calib-size", str(args.calib_size),
              "--batch-size", str(args.batch_size), "--margin", args.margin,
              "--candidates", *map(str, args.candidates)]
    if args.verbose:
        worker.append("--verbose")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    cmd = [sys.executable, *(launcher if processes > 1 else []), *worker]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=ROOT, check=True)
    out = json.loads(result.read_text())
    out["launch_wall_s"] = time.perf_counter() - t0
    return out


def _names(args) -> tuple[str, str]:
    plural = "s" if args.single_threads != 1 else ""
    return f"1 process x {args.single_threads} thread{plural}", f"{args.processes} processes x 1 thread"


def _summary(args, runs: dict[str, list[dict]]) -> tuple[dict, list[str]]:
    med = {k: {f: statistics.median(r[f] for r in rs) for f in ("search_wall_s", "launch_wall_s")}
           for k, rs in runs.items()}
    single, multi = _names(args)
    all_runs = [r for rs in runs.values() for r in rs]
    identical = all(r["bits"] == all_runs[0]["bits"] for r in all_runs)
    speedup = med[single]["search_wall_s"] / med[multi]["search_wall_s"]
    first = all_runs[0]
    summary = {"command": "python benchmarks/distributed_speed.py " + " ".join(args.argv),
               "model": args.model, "calib_images": first["calib_images"], "batches": first["batches"],
               "margin": args.margin, "candidates": args.candidates, "repeats": args.repeats,
               "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
               "load_average_before_after": args.load, "identical_bits": identical,
               "speedup_search_wall": speedup, "median": med, "runs": runs}
    lines = [
        f"# Distributed search: {multi} vs {single} ({args.model}, EuroSAT)",
        "",
        f"Command: `{summary['command']}` — torch {torch.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs (1-minute load average {args.load[0]:.2f} before, {args.load[1]:.2f} after); "
        f"{first['calib_images']} calibration images from the training split in {first['batches']} batches; "
        f"{args.margin} margin, T_init = 0.5, candidates {', '.join(map(str, args.candidates))}, sequential "
        f"strategy, fast evaluation, gloo backend. Median of {args.repeats} alternating run(s).",
        "",
        "| configuration | search wall time (s) | launch wall time incl. start-up (s) | oracle calls | "
        "layer-forwards (all ranks) | avg bits | final calib. acc. |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rs in runs.items():
        r = rs[0]
        lines.append(f"| {name} | {med[name]['search_wall_s']:.1f} | {med[name]['launch_wall_s']:.1f} | "
                     f"{r['oracle_calls']} | {r['layer_forwards']:,} | {r['average_bits']:.3f} | "
                     f"{r['final_value']:.2f}% |")
    lines += ["", f"Speed-up of the search (wall): **{speedup:.2f}x**; bit assignments identical: "
                  f"**{'yes' if identical else 'NO'}**.", ""]
    return summary, lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--calib-size", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--margin", default="adaptive", choices=["adaptive", "fixed"])
    parser.add_argument("--candidates", type=int, nargs="+", default=list(range(1, 9)))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--single-threads", type=int,
                        help="threads of the single process (default: --processes)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--verbose", action="store_true", help="show the search's progress lines")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.single_threads = args.single_threads or args.processes
    args.out.mkdir(parents=True, exist_ok=True)
    single, multi = _names(args)
    runs: dict[str, list[dict]] = {single: [], multi: []}
    before = os.getloadavg()[0]
    for i in range(args.repeats):
        pair = [(single, 1, args.single_threads), (multi, args.processes, 1)]
        for name, processes, threads in (pair if i % 2 == 0 else pair[::-1]):  # neither always goes first
            result = args.out / f"distributed_speed_run{i}.tmp.json"
            runs[name].append(_launch(args, processes, threads, result))
            print(f"{name}: search {runs[name][-1]['search_wall_s']:.1f} s", flush=True)
    for tmp in args.out.glob("distributed_speed_run*.tmp.json"):
        tmp.unlink()
    args.load = (before, os.getloadavg()[0])
    summary, lines = _summary(args, runs)
    (args.out / "distributed_speed.md").write_text("\n".join(lines))
    (args.out / "distributed_speed.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))
    return 0 if summary["identical_bits"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
