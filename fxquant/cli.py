"""The ``fxquant`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from fxquant._version import __version__

__all__ = ["main", "build_parser"]

_DEMO_PLAN = """\
fxquant demo (preview): the full demo is not built yet. When it is, it will
  1. generate a deterministic synthetic 10-class land-cover-like dataset,
  2. train a small CNN on it on the CPU,
  3. compress it with the adaptive mixed-precision bit-width search,
  4. print the per-layer report and the size before/after,
  5. write the packed model, report JSON, annotated graph and plots to ./fxquant-demo/.
Today you can already quantize a model from Python:
  import fxquant; q = fxquant.QuantConv2d.from_float(conv, bits=4)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fxquant",
        description="Mixed-precision post-training weight quantization of image classifiers (torch.fx).",
    )
    parser.add_argument("--version", action="version", version=f"fxquant {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("demo", help="compress a small model end to end on built-in synthetic data")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        sys.stdout.write(_DEMO_PLAN)
        return 0
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
