"""Throughput of fxquant.pack / fxquant.unpack on this machine.

Run: python benchmarks/bench_packing.py [--numel 11000000] [--repeats 5]
Reports MB/s of codes (one code = one byte of input to pack / output of unpack),
best of ``repeats`` runs, for every bit-width.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from fxquant import pack, unpack


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=11_000_000, help="codes per call (ResNet18 ~ 11M)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# pack/unpack throughput: {args.numel:,} codes, best of {args.repeats}, "
          f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    print("| bits | pack MB/s | unpack MB/s | packed bytes |")
    print("|---:|---:|---:|---:|")
    mb = args.numel / 1e6
    for bits in range(1, 9):
        codes = torch.randint(0, 1 << bits, (args.numel,), dtype=torch.uint8)
        packed = pack(codes, bits)
        t_pack = best_time(lambda: pack(codes, bits), args.repeats)
        t_unpack = best_time(lambda: unpack(packed, bits, args.numel), args.repeats)
        if not torch.equal(unpack(packed, bits, args.numel), codes):
            raise RuntimeError(f"round trip failed at {bits} bits")
        print(f"| {bits} | {mb / t_pack:,.0f} | {mb / t_unpack:,.0f} | {packed.numel():,} |")


if __name__ == "__main__":
    main()
