"""``fxquant export``: write a ``.fxq`` model as an ONNX file with its low-bit weights.

::

    fxquant export model.fxq --onnx model.onnx [--packing container|bitstream] [--opset N]
                   [--model NAME|MODULE:FUNCTION] [--num-classes N] [--image-size N|HxW] [--in-channels C]

The architecture is rebuilt as ``fxquant eval`` does (the model spec recorded in
the file, or ``--model``), the packed weights are loaded, and the file is written
by :func:`fxquant.export.export_onnx`. The command then runs two random inputs
of another batch size through onnxruntime and the PyTorch model and prints the
largest relative difference.
"""

from __future__ import annotations

import argparse

import torch

from fxquant.cli.models import check_file
from fxquant.cli.output import CliError, say
from fxquant.cli.parser import _image_size, _positive_int
from fxquant.cli.recorded import MAX_CHANNELS

__all__ = ["add_export_parser", "cmd_export"]


def add_export_parser(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to the ``fxquant`` subparsers ``sub``."""
    from fxquant.export.onnx import PACKINGS

    p = sub.add_parser("export", parents=[common], help="write a .fxq model as ONNX with its low-bit weights",
                       description="Rebuild the model of a .fxq file (as 'fxquant eval' does) and write it as one "
                                   "self-contained ONNX file whose quantized weights stay low-bit "
                                   "(DequantizeLinear over uint8/uint4/uint2 codes, or an exact bit-stream).")
    p.add_argument("file", metavar="FILE.fxq")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--packing", choices=PACKINGS, default="container",
                   help="container: each code in the next ONNX integer type (1->2, 3->4, 5..7->8 bits); "
                        "bitstream: odd widths as an exact uint8 bit-stream unpacked in the graph (default: "
                        "container)")
    p.add_argument("--opset", type=_positive_int, metavar="N",
                   help="ONNX opset (default: the lowest that stores the widths present: 20, 21 or 25)")
    p.add_argument("--model", metavar="NAME|MODULE:FUNCTION",
                   help="the architecture (default: as recorded in the .fxq file)")
    p.add_argument("--num-classes", type=_positive_int, metavar="N", help="number of classes (default: recorded)")
    p.add_argument("--image-size", type=_image_size, metavar="N|HxW",
                   help="input height x width of the traced example (default: recorded); the batch is dynamic")
    p.add_argument("--in-channels", type=_positive_int, metavar="C", help="input channels (default: recorded, else 3)")
    return p


def cmd_export(args) -> int:
    """Run ``fxquant export`` (arguments from :func:`add_export_parser`)."""
    import fxquant
    from fxquant.cli.main import _eval_model
    from fxquant.export import export_onnx, onnx_predict, onnx_session
    from fxquant.fileformat.saveload import read_header

    path = check_file(args.file, "file")
    header = read_header(path)
    meta = header.get("metadata") or {}
    # the same allow-list and bounds as eval: a file never chooses the code that runs
    spec, num_classes, build, rec = _eval_model(args, header, meta)
    size = tuple(args.image_size or rec["image_size"] or ())
    if len(size) != 2:
        raise CliError(f"{args.file} records no image size: pass --image-size N|HxW")
    channels = args.in_channels or meta.get("in_channels") or 3
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
        raise CliError(f"{args.file} records an unusable in_channels {str(channels)[:40]}: pass --in-channels C")

    qmodel = fxquant.load(path, build())
    example = torch.zeros(1, channels, *size)
    try:
        result = export_onnx(qmodel, args.onnx, example_input=example, opset=args.opset, packing=args.packing)
    except ValueError as e:
        raise CliError(f"cannot export {args.file}: {e}") from e
    check = torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = qmodel(check)
    got = onnx_predict(onnx_session(result.path), check)
    rel = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
    say(result.to_text())
    say(f"  the .fxq file: {path.stat().st_size:,} bytes; onnxruntime vs fxquant on 2 random inputs: "
        f"max relative difference {rel:.1e}")
    return 0
