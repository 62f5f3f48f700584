"""The ``fxquant`` argument parser: the subcommands, their options and help texts.

Usage errors are one line on stderr with exit code 2; option values are checked
by their ``type=`` (sizes, positive integers, margins). The commands themselves
are in :mod:`fxquant.cli.main`.
"""

from __future__ import annotations

import argparse
import math

from fxquant._version import __version__

__all__ = ["build_parser", "DEFAULT_CALIB"]

DEFAULT_CALIB = 2000


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _image_size(text: str) -> tuple[int, int]:
    """``64`` or ``64x48`` (height x width)."""
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW with positive sizes, got {text!r}")
    return values


def _checked(text: str, convert, ok, expected: str, invalid: str):
    """``convert(text)`` if it parses and ``ok`` accepts it; argparse's one-line error otherwise."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {invalid}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _checked(text, int, lambda v: v >= 1, "a positive integer", "a positive integer")


def _margin(text: str) -> float:
    return _checked(text, float, lambda v: math.isfinite(v) and v >= 0, "a number of percentage points",
                    "a finite number >= 0")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bits, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _add_input_options(p: argparse.ArgumentParser, *, for_eval: bool) -> None:
    was = " (default: as recorded in the .fxq file)" if for_eval else ""
    p.add_argument("--model", metavar="NAME|timm:NAME|MODULE:FUNCTION",
                   help="a torchvision classifier name (resnet18, mobilenet_v3_small, ...), timm:NAME for a timm "
                        "architecture (built with pretrained=False), or module:function "
                        "returning the nn.Module (the current directory is importable)"
                        + (was if for_eval else "; default: the checkpoint's 'model' entry"))
    p.add_argument("--in-chans", type=_positive_int, metavar="N",
                   help="input channels of a timm:NAME model" + (was if for_eval else
                                                                 " (default: the checkpoint's, else 3)"))
    p.add_argument("--num-classes", type=_positive_int, metavar="N",
                   help="number of classes" + (was if for_eval else " (default: the checkpoint's, else 10)"))
    p.add_argument("--image-size", type=_image_size, metavar="N|HxW",
                   help="resize the images to this size" + (was if for_eval else
                                                             " (default: their own size, which must then be "
                                                             "the same for all; EuroSAT: 64)"))
    p.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                   help="per-channel mean of the [0, 1] images" + (was if for_eval else
                                                                  " (default: the checkpoint's, else EuroSAT's)"))
    p.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                   help="per-channel std of the [0, 1] images" + (was if for_eval else
                                                                 " (default: the checkpoint's, else EuroSAT's)"))
    p.add_argument("--split-seed", type=int, metavar="N",
                   help="seed of the stratified 80/20 train/test split" + (was if for_eval else
                                                                           " (default: the checkpoint's, else 0)"))
    p.add_argument("--batch-size", type=_positive_int, default=128, metavar="N",
                   help="images per forward pass (default: 128)")


def build_parser() -> argparse.ArgumentParser:
    """The ``fxquant`` argument parser (subcommands compress, inspect, eval, demo, export)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress output (results and errors only)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging, and tracebacks on errors")
    parser = _Parser(
        prog="fxquant",
        description="Mixed-precision post-training weight quantization of image classifiers (torch.fx).",
        epilog="Run 'fxquant demo' for a complete example in about a minute; 'fxquant COMMAND --help' for "
               "a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"fxquant {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output (results and errors only)")
    parser.add_argument("--debug", action="store_true", help="debug logging, and tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("compress", parents=[common], help="search per-layer bit-widths and write a packed .fxq",
                       description="Compress a trained classifier with the mixed-precision bit-width search; "
                                   "the calibration images come only from the training part of the seeded "
                                   "stratified 80/20 split of --data.")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="float weights: a state_dict, or a dict with a 'state_dict' key "
                        "(as examples/eurosat/train.py writes)")
    p.add_argument("--data", required=True, metavar="PATH", help="a EuroSAT root or an ImageFolder")
    p.add_argument("--out", required=True, metavar="FILE.fxq", help="the packed model")
    p.add_argument("--margin", type=_margin, default=0.5, metavar="T_INIT",
                   help="T_init in accuracy percentage points (default: 0.5): the calibration accuracy "
                        "drop allowed (default search), or eq. 4's T_init (--method paper)")
    p.add_argument("--mode", choices=("adaptive", "fixed"), default="adaptive",
                   help="--method paper's margin: adaptive = T_init x importance (eq. 4, default), "
                        "fixed = T_init")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--target-bits", type=_positive_float, metavar="B",
                        help="budget mode: the most accurate allocation with eq. 5 average bits <= B")
    budget.add_argument("--max-bytes", type=_positive_int, metavar="N",
                        help="budget mode: packed weights + scales + zero points <= N bytes")
    p.add_argument("--method", choices=("auto", "paper", "sensitivity"), default="auto",
                   help="search: measured sensitivities allocated globally (sensitivity; default auto "
                        "is the same) or the paper's greedy (paper)")
    p.add_argument("--calib-size", type=_positive_int, metavar="N",
                   help=f"calibration images, from the training split (default: {DEFAULT_CALIB} or all)")
    p.add_argument("--report", metavar="FILE.json", help="also write the report as JSON")
    p.add_argument("--graph", metavar="FILE.svg", help="also draw the annotated graph (.svg and .html)")
    _add_input_options(p, for_eval=False)

    p = sub.add_parser("inspect", parents=[common], help="per-layer bits and sizes of a .fxq file",
                       description="Print the per-layer table, average bits and sizes of a .fxq file, from "
                                   "its header only (no model needed).")
    p.add_argument("file", metavar="FILE.fxq")
    p.add_argument("--json", action="store_true", help="print the report, metadata and sizes as JSON")

    p = sub.add_parser("eval", parents=[common], help="top-1 accuracy of a .fxq on the held-out test split",
                       description="Rebuild the architecture recorded in the .fxq file (or --model), load the "
                                   "packed weights and report top-1 accuracy on the held-out test part of the "
                                   "same seeded split; with --checkpoint, the float model's too.")
    p.add_argument("file", metavar="FILE.fxq")
    p.add_argument("--data", metavar="PATH",
                   help="a EuroSAT root or an ImageFolder (not needed for a file written by 'fxquant demo' "
                        "on its synthetic data)")
    p.add_argument("--checkpoint", metavar="PATH", help="also evaluate these float weights")
    _add_input_options(p, for_eval=True)

    p = sub.add_parser("demo", parents=[common],
                       help="train, compress and report a small CNN end to end (synthetic data, offline)",
                       description="Generate a synthetic 13-band land-cover-like dataset, train a small CNN, "
                                   "compress it with the adaptive bit-width search, report held-out accuracy "
                                   "and sizes, and write the .fxq, report, graph and plots.")
    p.add_argument("--out", default="fxquant-demo", metavar="DIR", help="output folder (default: ./fxquant-demo)")
    p.add_argument("--data", metavar="PATH",
                   help="use a real EuroSAT root (or ImageFolder) instead of the synthetic data")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, split, initialisation and "
                                                       "training (default: 0)")
    p.add_argument("--epochs", type=_positive_int, metavar="N", help="training epochs (default: 6; --quick: 3)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a few seconds; for tests)")

    from fxquant.cli.export import add_export_parser  # here: the export module imports this one

    add_export_parser(sub, common)
    return parser
