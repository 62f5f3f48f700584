"""Forward latency of QuantConv2d / QuantLinear vs their float modules.

Run: python benchmarks/bench_module_latency.py [--threads 2] [--repeats 30]

Layers are ResNet18-sized: the 512x512x3x3 conv of layer4 (2.36M weights, the
largest in ResNet18) at the spatial size it sees for 64 px (EuroSAT, 2x2) and
224 px (ImageNet, 7x7) inputs, a 128x128x3x3 conv of layer2, and a 512->1000
linear head. Each quantized module is timed in both storage modes:
packed-only (unpack + dequantize on every call) and cached dequantized weight.
Ratios are quantized / float, median of ``repeats`` calls, same process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from fxquant import QuantConv2d, QuantLinear, set_weight_cache

CASES = [
    ("conv 512x512x3x3 @2x2", lambda: nn.Conv2d(512, 512, 3, padding=1, bias=False), (512, 2, 2)),
    ("conv 512x512x3x3 @7x7", lambda: nn.Conv2d(512, 512, 3, padding=1, bias=False), (512, 7, 7)),
    ("conv 128x128x3x3 @8x8", lambda: nn.Conv2d(128, 128, 3, padding=1, bias=False), (128, 8, 8)),
    ("linear 512->1000", lambda: nn.Linear(512, 1000), (512,)),
]


@torch.inference_mode()
def median_ms(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
    for _ in range(3):
        module(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        module(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--bits", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# module latency, {args.bits}-bit, torch {torch.__version__}, {args.threads} threads, "
          f"median of {args.repeats}")
    print("| layer | batch | float ms | packed-only ms (ratio) | cached ms (ratio) |")
    print("|---|---:|---:|---:|---:|")
    for name, make, shape in CASES:
        fm = make().eval()
        qcls = QuantLinear if isinstance(fm, nn.Linear) else QuantConv2d
        packed = qcls.from_float(fm, args.bits).eval()
        cached = set_weight_cache(qcls.from_float(fm, args.bits).eval(), True)
        for batch in (1, 64):
            x = torch.randn(batch, *shape)
            t_f = median_ms(fm, x, args.repeats)
            t_p = median_ms(packed, x, args.repeats)
            t_c = median_ms(cached, x, args.repeats)
            print(f"| {name} | {batch} | {t_f:.3f} | {t_p:.3f} ({t_p / t_f:.2f}x) | "
                  f"{t_c:.3f} ({t_c / t_f:.2f}x) |")


if __name__ == "__main__":
    main()
