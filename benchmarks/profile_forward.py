"""Where the packed-only forward spends its time over float, before and after the fast unpack.

Run: python benchmarks/profile_forward.py [--model resnet18] [--bits 4 3] [--threads 1] [--cpu-time]

"Before" is the column unpack (``fxquant.core.packing._unpack_columns``, the only
path before the lane path and still the big-endian one), "after" is
``fxquant.unpack`` now; both in the same process. Sections:

* unpack alone, every width, on a layer-sized tensor (2,359,296 codes: the
  512x512x3x3 conv of a ResNet's layer4);
* the layers of ``benchmarks/bench_module_latency.py``: float module,
  packed-only before / after, cached weights;

and for a ResNet (EuroSAT head, random weights: timing does not depend on
them) at 64x64 inputs, per bit-width:

* the cost of regenerating all weights once (what a packed-only forward adds):
  unpack with the column reference path ("before") and the lane path
  (``fxquant.unpack`` now, "after"), and dequantize;
* whole-model forward at batch 1 and 64, interleaved in one process: float,
  packed-only with the column unpack (before), packed-only (after), cached
  weights; median over rounds of per-round ratios to float.

``--cpu-time`` times with the thread's CPU time instead of wall time: on a
machine shared with other jobs it counts only the time this thread ran, so
ratios stay meaningful (use it with ``--threads 1`` only).
"""

from __future__ import annotations

import argparse
import math
from contextlib import nullcontext
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxquant  # noqa: E402
from examples.eurosat.common import build_model  # noqa: E402
from benchmarks.bench_module_latency import CASES  # noqa: E402
from fxquant.core import packing  # noqa: E402
from fxquant.nn.modules import is_quantized_module  # noqa: E402


class _ColumnUnpack:
    """Within the block, fxquant.unpack takes the column (reference) path, as before the lane path."""

    def __enter__(self):
        self.saved = packing._LITTLE_ENDIAN
        packing._LITTLE_ENDIAN = False

    def __exit__(self, *exc):
        packing._LITTLE_ENDIAN = self.saved


def best_ms(fn, repeats: int, clock) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times) * 1e3


def unpack_table(repeats: int, clock) -> None:
    numel = 512 * 512 * 9
    print(f"\n## unpack of {numel:,} codes (best of {repeats})\n")
    print("| bits | before ms | after ms | speed-up | after MB/s of codes |\n|---:|---:|---:|---:|---:|")
    for bits in range(1, 8):
        packed = fxquant.pack(torch.randint(0, 1 << bits, (numel,), dtype=torch.uint8), bits)
        with _ColumnUnpack():
            before = best_ms(lambda: fxquant.unpack(packed, bits, numel), repeats, clock)
        after = best_ms(lambda: fxquant.unpack(packed, bits, numel), repeats, clock)
        print(f"| {bits} | {before:.2f} | {after:.2f} | {before / after:.1f}x | {numel / after / 1e3:,.0f} |")


def module_table(bits: int, repeats: int, clock) -> None:
    print(f"\n## modules at {bits} bits (median of {repeats} calls)\n")
    print("| layer | batch | float ms | packed-only before | packed-only after | cached |\n"
          "|---|---:|---:|---:|---:|---:|")
    for name, make, shape in CASES:
        fm = make().eval()
        qcls = fxquant.QuantLinear if isinstance(fm, torch.nn.Linear) else fxquant.QuantConv2d
        packed = qcls.from_float(fm, bits).eval()
        cached = fxquant.set_weight_cache(qcls.from_float(fm, bits).eval(), True)
        for batch in (1, 64):
            x = torch.randn(batch, *shape)
            with torch.inference_mode():
                t_f = median_ms(fm, x, repeats, clock)
                with _ColumnUnpack():
                    t_b = median_ms(packed, x, repeats, clock)
                t_a = median_ms(packed, x, repeats, clock)
                t_c = median_ms(cached, x, repeats, clock)
            print(f"| {name} | {batch} | {t_f:.3f} | " + " | ".join(
                f"{t:.3f} ({t / t_f:.2f}x)" for t in (t_b, t_a, t_c)) + " |")


def median_ms(module, x, repeats: int, clock) -> float:
    for _ in range(3):
        module(x)
    times = []
    for _ in range(repeats):
        start = clock()
        module(x)
        times.append(clock() - start)
    return statistics.median(times) * 1e3


def weight_costs(qmodel, repeats: int, clock) -> dict[str, float]:
    mods = [m for m in qmodel.modules() if is_quantized_module(m)]
    codes = [m.weight_codes() for m in mods]

    def unpack_all():
        for m in mods:
            fxquant.unpack(m.packed_weight, m.bits, math.prod(m.weight_shape))

    def dequantize_all():
        for m, c in zip(mods, codes):
            fxquant.dequantize(c, m.weight_scale, m.weight_zero_point)

    with torch.inference_mode():
        with _ColumnUnpack():
            before = best_ms(unpack_all, repeats, clock)
        return {"unpack before": before, "unpack after": best_ms(unpack_all, repeats, clock),
                "dequantize": best_ms(dequantize_all, repeats, clock)}


def forward_ratios(models: dict, batch: int, rounds: int, clock) -> dict[str, tuple[float, float]]:
    x = torch.randn(batch, 3, 64, 64)
    calls = 10 if batch == 1 else 1
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for name, model in models.items():
            with _ColumnUnpack() if name == "packed before" else nullcontext():
                model(x)  # warm-up
        for r in range(rounds):
            for name in (list(models) if r % 2 == 0 else reversed(list(models))):
                with _ColumnUnpack() if name == "packed before" else nullcontext():
                    start = clock()
                    for _ in range(calls):
                        models[name](x)
                    times[name].append((clock() - start) / calls)
    ref = times["float"]
    return {name: (statistics.median(t) * 1e3, statistics.median(a / b for a, b in zip(t, ref)))
            for name, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=15, help="repeats of the weight-regeneration timings")
    parser.add_argument("--cpu-time", action="store_true", help="thread CPU time instead of wall time")
    parser.add_argument("--sections", nargs="+", default=["unpack", "modules", "model"],
                        choices=["unpack", "modules", "model"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    model = build_model(args.model).eval()
    params = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    print(f"# {args.model} ({params / 1e6:.1f}M conv/linear weights), 64x64 inputs, torch {torch.__version__}, "
          f"{args.threads} thread(s), {'thread CPU time' if args.cpu_time else 'wall time'}")
    if "unpack" in args.sections:
        unpack_table(args.repeats, clock)
    if "modules" in args.sections:
        for bits in args.bits:
            module_table(bits, 2 * args.repeats, clock)
    for bits in args.bits if "model" in args.sections else ():
        qmodel = fxquant.quantize(model, bits)
        cached = fxquant.set_weight_cache(fxquant.quantize(model, bits), True)
        costs = weight_costs(qmodel, args.repeats, clock)
        print(f"\n## {bits} bits: regenerating every weight once (best of {args.repeats})\n")
        print(" | ".join(f"{k} {v:.2f} ms" for k, v in costs.items())
              + f" | unpack speed-up {costs['unpack before'] / costs['unpack after']:.1f}x")
        print(f"\n| batch | float ms | packed-only before | packed-only after | cached |\n|---:|---:|---:|---:|---:|")
        for batch in (1, 64):
            res = forward_ratios({"float": model, "packed before": qmodel, "packed after": qmodel,
                                  "cached": cached}, batch, args.rounds, clock)
            cells = " | ".join(f"{res[k][0]:.1f} ms ({res[k][1]:.2f}x)"
                               for k in ("packed before", "packed after", "cached"))
            print(f"| {batch} | {res['float'][0]:.1f} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
