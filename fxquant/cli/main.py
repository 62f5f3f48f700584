"""The ``fxquant`` command line: ``compress``, ``inspect``, ``eval``, ``demo`` and ``export``.

::

    fxquant compress --model resnet18 --checkpoint ckpt.pt --data PATH --out model.fxq \\
                     [--margin 0.5] [--target-bits B | --max-bytes N]
                     [--method auto|sensitivity|paper [--mode adaptive|fixed]] [--calib-size N]
                     [--report r.json] [--graph g.svg]
    fxquant inspect model.fxq                  # per-layer table and sizes, from the file's header only
    fxquant eval model.fxq --data PATH [--checkpoint ckpt.pt]   # top-1 on the held-out test split
    fxquant demo [--out DIR] [--data PATH] [--seed N] [--quick]
    fxquant export model.fxq --onnx model.onnx [--packing container|bitstream]   # see fxquant.cli.export

Data (``--data``) is a EuroSAT root (the ``fxquant.data.eurosat`` layout, ``<root>/eurosat/2750``)
or any ImageFolder (``<root>/<class>/<image>``). Images are split 80/20 per class with a
seeded stratified split (:func:`fxquant.data.eurosat.stratified_split`); the calibration images
of ``compress`` come only from the training part, and ``eval`` reports accuracy on the
held-out part. ``compress`` records how to rebuild the model and its inputs (model name
or ``module:function``, number of classes, image size, normalisation, split seed) in the
``.fxq`` file's ``metadata``, so ``eval`` needs only the file and the data.

Progress (data loading, one line per searched layer, training epochs) goes to stderr and
``--quiet`` silences it; results go to stdout. Every error is one line on stderr
(``fxquant: error: ...``) with exit code 1 (2 for command-line usage errors); ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from fxquant.cli.compress import cmd_compress, mib, other_tensor_bytes
from fxquant.cli.models import (build_model, check_file, check_model_spec, in_chans_kwargs, load_checkpoint,
                                load_weights)
from fxquant.cli.output import CliError, error_text, one_line, one_line_warnings, say
from fxquant.cli.parser import build_parser
from fxquant.cli.recorded import check_model_size, check_recorded, recorded_builder
from fxquant.data.images import TEST_FRACTION, LabelledImages, accuracy, load_data
from fxquant.fileformat.container import FRAMING_BYTES
from fxquant.logs import progress_logging

__all__ = ["main", "build_parser", "CliError"]

log = logging.getLogger("fxquant.cli")


def _report_of(header: dict, file):
    """The header's report, or an FxqFormatError: a crafted ``report`` must not raise a raw KeyError."""
    from fxquant.fileformat.container import FxqFormatError
    from fxquant.fileformat.header import report_dict
    from fxquant.reporting.report import CompressionReport

    try:
        report = CompressionReport.from_dict(report_dict(header))
        text = report.to_text()
        report.to_dict()
        for name in ("packed_bytes", "grid_bytes", "float32_bytes", "average_bits", "compression_ratio"):
            value = getattr(report, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise TypeError(f"{name} is {str(value)[:30]!r}, not a number >= 0")
    except Exception as e:  # noqa: BLE001 - any malformed report is a format error
        raise FxqFormatError(f"{file}: malformed header: header.report is unusable ({type(e).__name__}: {e})",
                             "header") from e
    return report, text


def _shown(value, limit: int = 60) -> str:
    """A metadata value for display: one bounded line, whatever its type."""
    return one_line(str(value), limit)


def _cmd_inspect(args) -> int:
    from fxquant.fileformat.saveload import read_header

    path = check_file(args.file, "file")
    header = read_header(path)
    report, text = _report_of(header, args.file)
    meta = header.get("metadata") or {}
    file_bytes = path.stat().st_size
    other = other_tensor_bytes(header)
    sizes = {"file_bytes": file_bytes, "packed_bytes": report.packed_bytes, "grid_bytes": report.grid_bytes,
             "other_tensor_bytes": other, "float32_weight_bytes": report.float32_bytes,
             "float32_model_bytes": report.float32_bytes + other, "header_bytes": file_bytes - FRAMING_BYTES -
             header["data"]["nbytes"]}
    if args.json:
        say(json.dumps({"file": str(path), "format_version": header["format_version"],
                         "fxquant_version": header["fxquant_version"], "torch_version": header["torch_version"],
                         "metadata": meta, "sizes": sizes, "report": report.to_dict()}, indent=1))
        return 0
    say(f"{path}: fxquant file format {header['format_version']}, written by fxquant "
         f"{_shown(header['fxquant_version'])} with torch {_shown(header['torch_version'])}")
    if meta.get("model"):
        size = meta.get("image_size")
        size = "x".join(_shown(s, 8) for s in size) if isinstance(size, list) and size else "?"
        say(f"model: {_shown(meta['model'], 200)} ({_shown(meta.get('num_classes', '?'))} classes, input "
             f"{_shown(meta.get('in_channels', '?'))}x{_shown(size)}), from {_shown(meta.get('created_by', '?'))} "
             f"on {_shown(meta.get('data_kind', '?'))} data, split seed {_shown(meta.get('split_seed', '?'))}")
    else:
        say(f"model: {_shown(header['model']['class'])} (no model spec recorded: 'fxquant eval' needs --model)")
    say()
    say(text)
    say()
    say(f"sizes: file {file_bytes:,} B ({mib(file_bytes)}) = packed weights {report.packed_bytes:,} B + "
         f"scales/zero points {report.grid_bytes:,} B + other tensors {other:,} B + header "
         f"{sizes['header_bytes']:,} B")
    say(f"       float32 equivalent {sizes['float32_model_bytes']:,} B ({mib(sizes['float32_model_bytes'])}): "
         f"the file is {sizes['float32_model_bytes'] / max(1, file_bytes):.1f}x smaller; weights "
         f"{report.compression_ratio:.1f}x at {report.average_bits:.2f} average bits")
    return 0


def _check_classes(data: LabelledImages, meta: dict, file) -> None:
    recorded = meta.get("classes")
    if isinstance(recorded, list) and recorded and list(data.classes) != recorded:
        raise CliError(f"the data's classes ({', '.join(data.classes[:4])}, ...) differ from those {file} was "
                       f"compressed with ({', '.join(_shown(c, 30) for c in recorded[:4])}, ...)")


def _bounded_scalars(values: dict, limit: int = 4096) -> bool:
    """JSON values a file may pass to a factory the user named: small numbers and booleans only."""
    return all(isinstance(v, bool) or (isinstance(v, (int, float)) and abs(v) <= limit)
               for v in values.values())


def _eval_model(args, header: dict, meta: dict):
    """``(spec, build)`` for eval: a recorded spec only through the allow-list, sizes checked on ``meta``."""
    spec = args.model or meta.get("model")
    if not spec:
        raise CliError(f"{args.file} records no model spec (not written by 'fxquant compress' or 'fxquant demo'); "
                       "pass --model NAME|MODULE:FUNCTION and --num-classes N")
    if args.model is None:
        builder = recorded_builder(spec, args.file)  # nothing is imported for a spec outside the table
    else:
        check_model_spec(spec)
        builder = None
    rec = check_recorded(meta, args.file, builder)
    num_classes = args.num_classes or rec["num_classes"] or 10
    model_kwargs = rec["model_kwargs"] if spec == meta.get("model") else {}
    if builder is None:
        model_kwargs = {**model_kwargs, **in_chans_kwargs(args, spec)}
    if builder is None and not _bounded_scalars(model_kwargs):
        raise CliError(f"{args.file} records unusable model arguments; pass --model to rebuild it")

    def build():
        if builder is None:
            return build_model(spec, num_classes, model_kwargs)
        try:
            return builder.build(num_classes, model_kwargs).eval()
        except Exception as e:  # noqa: BLE001 - reported as one line
            raise CliError(f"cannot build {spec}(num_classes={num_classes}): {type(e).__name__}: {e}") from e

    check_model_size(build, header, args.file, spec)
    return spec, num_classes, build, rec


def _cmd_eval(args) -> int:
    import fxquant
    from fxquant.fileformat.saveload import read_header

    path = check_file(args.file, "file")
    header = read_header(path)
    meta = header.get("metadata") or {}
    spec, num_classes, build, rec = _eval_model(args, header, meta)
    if args.checkpoint is not None:
        check_file(args.checkpoint, "checkpoint")
    if args.data is None and meta.get("data_kind") != "synthetic":
        raise CliError("--data PATH is required (the data the model was compressed on)")
    if args.data is not None and not Path(args.data).expanduser().exists():
        raise CliError(f"no data at {args.data}")
    size = tuple(args.image_size or rec["image_size"] or ()) or None
    mean = args.mean or rec["mean"]
    std = args.std or rec["std"]
    split_seed = args.split_seed if args.split_seed is not None else rec["split_seed"]
    test_fraction = rec["test_fraction"]

    if args.data is None:
        from fxquant.data.synthetic import synthetic_dataset

        if rec["synthetic"] is None:
            raise CliError(f"{args.file} records no usable synthetic-data parameters; pass --data PATH")
        try:
            data = synthetic_dataset(**rec["synthetic"])
        except ValueError as e:
            raise CliError(f"{args.file}: {e}; pass --data PATH") from e
    else:
        data = load_data(args.data, size)
        _check_classes(data, meta, args.file)
    if mean is None or std is None:
        from fxquant.data.eurosat import EUROSAT_MEAN, EUROSAT_STD

        mean, std = mean or EUROSAT_MEAN, std or EUROSAT_STD
    if len(mean) != data.channels or len(std) != data.channels:
        raise CliError(f"normalisation has {len(mean)} values, the data has {data.channels} channels")
    _, test_idx = data.split(split_seed, test_fraction)
    if test_idx.numel() == 0:
        raise CliError("the held-out test split is empty (too few images per class)")
    test = data.loader(test_idx, mean=mean, std=std, size=size, batch_size=args.batch_size)

    qmodel = fxquant.load(path, build())
    log.info("%s; held-out test split: %d images (%d%%, stratified, split seed %d)", data.describe(),
             test_idx.numel(), round(100 * test_fraction), split_seed)
    q_acc, n = accuracy(qmodel, test, "compressed")
    avg = fxquant.report(qmodel).average_bits
    say(f"held-out test split: {n:,} images ({round(100 * test_fraction)}%, stratified, split seed {split_seed})")
    say(f"compressed {args.file}: top-1 {q_acc:.2f}% ({avg:.2f} average bits)")
    if args.checkpoint is not None:
        state, _ = load_checkpoint(args.checkpoint)
        float_model = build()
        load_weights(float_model, state, args.checkpoint, spec, num_classes)
        f_acc, _ = accuracy(float_model, test, "float")
        say(f"float {args.checkpoint}: top-1 {f_acc:.2f}%  (compressed - float: {q_acc - f_acc:+.2f} points)")
    return 0


def _cmd_demo(args) -> int:
    from fxquant.demo import run_demo

    run_demo(args.out, seed=args.seed, data=args.data, quick=args.quick, epochs=args.epochs, quiet=args.quiet)
    return 0


def _cmd_export(args) -> int:
    from fxquant.cli.export import cmd_export

    return cmd_export(args)


_COMMANDS = {"compress": cmd_compress, "inspect": _cmd_inspect, "eval": _cmd_eval, "demo": _cmd_demo,
             "export": _cmd_export}


def main(argv: list[str] | None = None) -> int:
    """Run the ``fxquant`` command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    args.quiet = getattr(args, "quiet", False)
    args.debug = getattr(args, "debug", False)
    if args.command is None:
        parser.print_help()
        return 0
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    with progress_logging(level), one_line_warnings():
        try:
            return _COMMANDS[args.command](args)
        except KeyboardInterrupt:
            if args.debug:
                raise
            sys.stderr.write("fxquant: interrupted\n")
            return 130
        except BrokenPipeError:  # e.g. `fxquant inspect m.fxq | head`: stop quietly
            with contextlib.suppress(Exception):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except Exception as e:  # noqa: BLE001 - every error is one line unless --debug
            if args.debug:
                raise
            sys.stderr.write(f"fxquant: error: {error_text(e)}\n")
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
