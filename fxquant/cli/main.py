"""The ``fxquant`` command line: ``compress``, ``inspect``, ``eval`` and ``demo``.

::

    fxquant compress --model resnet18 --checkpoint ckpt.pt --data PATH --out model.fxq \\
                     [--margin 0.5] [--mode adaptive|fixed] [--target-bits B | --max-bytes N]
                     [--method auto|paper|sensitivity] [--calib-size N] [--report r.json] [--graph g.svg]
    fxquant inspect model.fxq                  # per-layer table and sizes, from the file's header only
    fxquant eval model.fxq --data PATH [--checkpoint ckpt.pt]   # top-1 on the held-out test split
    fxquant demo [--out DIR] [--data PATH] [--seed N] [--quick]

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

from fxquant.data.images import TEST_FRACTION, LabelledImages, accuracy, load_data, stats_loader
from fxquant.cli.models import build_model, check_file, check_model_spec, load_checkpoint, load_weights
from fxquant.cli.output import CliError, error_text, one_line_warnings, progress_logging, say
from fxquant.cli.parser import DEFAULT_CALIB, build_parser
from fxquant.reporting.draw import draw

__all__ = ["main", "build_parser", "CliError"]

log = logging.getLogger("fxquant.cli")

_QUANT_SUFFIXES = (".packed_weight", ".weight_scale", ".weight_zero_point")


def _mib(nbytes: float) -> str:
    if nbytes >= 2**20:
        return f"{nbytes / 2**20:.2f} MiB"
    return f"{nbytes / 2**10:.1f} KiB"


# ----------------------------------------------------------------------------- commands


def _writable(path: str, what: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{what} {path} is a directory; give a file name")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create the folder for {what} {path}: {e.strerror or e}") from e
    return p


def _file_line(path, file_bytes: int, report, other_bytes: int) -> str:
    full = report.float32_bytes + other_bytes
    return (f"wrote {path}: {file_bytes:,} bytes ({_mib(file_bytes)}); the float32 model: about {_mib(full)} "
            f"({full / max(1, file_bytes):.1f}x larger)")


def _cmd_compress(args) -> int:
    import fxquant
    from fxquant.data.eurosat import EUROSAT_MEAN, EUROSAT_STD, calibration_indices
    from fxquant.fileformat.saveload import read_header

    ckpt_path = check_file(args.checkpoint, "checkpoint")
    data_root = Path(args.data).expanduser()
    if not data_root.exists():
        raise CliError(f"no data at {args.data}")
    if args.model is not None:
        check_model_spec(args.model)
    out = _writable(args.out, "--out")
    report_path = _writable(args.report, "--report") if args.report else None
    graph_path = _writable(args.graph, "--graph") if args.graph else None

    state, ckpt_meta = load_checkpoint(ckpt_path)
    spec = args.model or ckpt_meta.get("model")
    if not isinstance(spec, str) or not spec:
        raise CliError(f"--model is required: checkpoint {args.checkpoint} does not name its architecture")
    recorded_classes = ckpt_meta.get("num_classes")
    num_classes = args.num_classes or (recorded_classes if isinstance(recorded_classes, int) else 10)
    kwargs = ckpt_meta.get("model_kwargs")
    model_kwargs = dict(kwargs) if isinstance(kwargs, dict) and spec == ckpt_meta.get("model") else {}
    model = build_model(spec, num_classes, model_kwargs)
    load_weights(model, state, args.checkpoint, spec, num_classes)

    norm = ckpt_meta.get("normalization") if isinstance(ckpt_meta.get("normalization"), dict) else {}
    mean = tuple(args.mean or norm.get("mean") or EUROSAT_MEAN)
    std = tuple(args.std or norm.get("std") or EUROSAT_STD)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise CliError(f"normalisation needs 3 means and 3 positive stds, got mean={mean} std={std}")
    split_seed = args.split_seed if args.split_seed is not None else int(ckpt_meta.get("split_seed", 0) or 0)

    data = load_data(data_root, args.image_size)
    log.info("%s", data.describe())
    size = tuple(args.image_size) if args.image_size else data.native_size
    train_idx, test_idx = data.split(split_seed)
    if train_idx.numel() == 0:
        raise CliError(f"the training split of {args.data} is empty")
    calib_size = args.calib_size or min(DEFAULT_CALIB, int(train_idx.numel()))
    if calib_size > train_idx.numel():
        raise CliError(f"--calib-size {calib_size} exceeds the {train_idx.numel()} images of the training split")
    calib_idx = calibration_indices(data.labels, train_idx, calib_size, split_seed)
    calib = data.loader(calib_idx, mean=mean, std=std, size=size, batch_size=args.batch_size)
    stats = stats_loader(data, train_idx, calib_idx, split_seed, mean=mean, std=std, size=size,
                         batch_size=args.batch_size)
    log.info("compressing %s: %s margin, T_init %g, %d calibration images from the training split (split "
             "seed %d; %d held out for 'fxquant eval')", spec, args.mode, args.margin, calib_size, split_seed,
             test_idx.numel())
    qmodel = fxquant.compress(model, calib, stats_loader=stats, margin=args.mode, t_init=args.margin,
                              verbose=not args.quiet, method=args.method, target_bits=args.target_bits,
                              max_bytes=args.max_bytes)
    report = fxquant.report(qmodel)

    metadata = {
        "created_by": "fxquant compress",
        "model": spec,
        "model_kwargs": model_kwargs,
        "num_classes": num_classes,
        "in_channels": data.channels,
        "image_size": list(size),
        "mean": list(mean),
        "std": list(std),
        "split_seed": split_seed,
        "test_fraction": TEST_FRACTION,
        "calib_size": calib_size,
        "data_kind": data.kind,
        "classes": list(data.classes),
        "checkpoint": str(args.checkpoint),
    }
    nbytes = fxquant.save(qmodel, out, metadata=metadata)
    say(report.to_text())
    say()
    say(_file_line(out, nbytes, report, _other_bytes(read_header(out))))
    if report_path:
        report_path.write_text(json.dumps({**report.to_dict(), "metadata": metadata}, indent=1))
        say(f"wrote {report_path}")
    if graph_path:
        from fxquant import passes

        drawing = draw(qmodel, graph_path, title=f"{spec}: average {report.average_bits:.2f} bits")
        say(f"wrote {drawing.svg} and {drawing.html}")
    if not args.quiet:
        log.info("held-out accuracy: fxquant eval %s --data %s --checkpoint %s", out, args.data, args.checkpoint)
    return 0


def _other_bytes(header: dict) -> int:
    """Bytes of the stored tensors that are not packed weights, scales or zero points."""
    return sum(t["nbytes"] for t in header["tensors"] if not any(k.endswith(_QUANT_SUFFIXES) for k in t["keys"]))


def _cmd_inspect(args) -> int:
    from fxquant.reporting.report import CompressionReport
    from fxquant.fileformat.saveload import read_header

    path = check_file(args.file, "file")
    header = read_header(path)
    report = CompressionReport.from_dict(header["report"])
    meta = header.get("metadata") or {}
    file_bytes = path.stat().st_size
    other = _other_bytes(header)
    sizes = {"file_bytes": file_bytes, "packed_bytes": report.packed_bytes, "grid_bytes": report.grid_bytes,
             "other_tensor_bytes": other, "float32_weight_bytes": report.float32_bytes,
             "float32_model_bytes": report.float32_bytes + other, "header_bytes": file_bytes - 52 -
             header["data"]["nbytes"]}
    if args.json:
        say(json.dumps({"file": str(path), "format_version": header["format_version"],
                         "fxquant_version": header["fxquant_version"], "torch_version": header["torch_version"],
                         "metadata": meta, "sizes": sizes, "report": report.to_dict()}, indent=1))
        return 0
    say(f"{path}: fxquant file format {header['format_version']}, written by fxquant "
         f"{header['fxquant_version']} with torch {header['torch_version']}")
    if meta.get("model"):
        size = "x".join(str(s) for s in meta.get("image_size") or []) or "?"
        say(f"model: {meta['model']} ({meta.get('num_classes', '?')} classes, input "
             f"{meta.get('in_channels', '?')}x{size}), from {meta.get('created_by', '?')} on "
             f"{meta.get('data_kind', '?')} data, split seed {meta.get('split_seed', '?')}")
    else:
        say(f"model: {header['model']['class']} (no model spec recorded: 'fxquant eval' needs --model)")
    say()
    say(report.to_text())
    say()
    say(f"sizes: file {file_bytes:,} B ({_mib(file_bytes)}) = packed weights {report.packed_bytes:,} B + "
         f"scales/zero points {report.grid_bytes:,} B + other tensors {other:,} B + header "
         f"{sizes['header_bytes']:,} B")
    say(f"       float32 equivalent {sizes['float32_model_bytes']:,} B ({_mib(sizes['float32_model_bytes'])}): "
         f"the file is {sizes['float32_model_bytes'] / max(1, file_bytes):.1f}x smaller; weights "
         f"{report.compression_ratio:.1f}x at {report.average_bits:.2f} average bits")
    return 0


def _check_classes(data: LabelledImages, meta: dict, file) -> None:
    recorded = meta.get("classes")
    if isinstance(recorded, list) and recorded and list(data.classes) != recorded:
        raise CliError(f"the data's classes ({', '.join(data.classes[:4])}, ...) differ from those {file} was "
                       f"compressed with ({', '.join(map(str, recorded[:4]))}, ...)")


def _bounded_scalars(values: dict, limit: int = 4096) -> bool:
    """JSON values a file may pass to a factory: small numbers and booleans only."""
    return all(isinstance(v, bool) or (isinstance(v, (int, float)) and abs(v) <= limit)
               for v in values.values())


def _check_recorded_spec(spec: str, meta: dict, file) -> None:
    """A .fxq may come from anyone: never import code it names, nor pass it arbitrary arguments."""
    if ":" in spec and not spec.startswith("fxquant."):
        raise CliError(f"{file} was compressed from the custom architecture {spec!r}; fxquant does not import "
                       f"code named inside a file: pass --model {spec} yourself if you trust it")
    kwargs = meta.get("model_kwargs") or {}
    if not isinstance(kwargs, dict) or not _bounded_scalars(kwargs):
        raise CliError(f"{file} records unusable model arguments {kwargs!r}; pass --model to rebuild it")


def _cmd_eval(args) -> int:
    import fxquant
    from fxquant.fileformat.saveload import read_header

    path = check_file(args.file, "file")
    header = read_header(path)
    meta = header.get("metadata") or {}
    spec = args.model or meta.get("model")
    if not spec:
        raise CliError(f"{args.file} records no model spec (not written by 'fxquant compress' or 'fxquant demo'); "
                       "pass --model NAME|MODULE:FUNCTION and --num-classes N")
    check_model_spec(spec)
    if args.model is None:
        _check_recorded_spec(spec, meta, args.file)
    num_classes = args.num_classes or meta.get("num_classes") or 10
    model_kwargs = (meta.get("model_kwargs") or {}) if spec == meta.get("model") else {}
    if args.checkpoint is not None:
        check_file(args.checkpoint, "checkpoint")
    if args.data is None and meta.get("data_kind") != "synthetic":
        raise CliError("--data PATH is required (the data the model was compressed on)")
    if args.data is not None and not Path(args.data).expanduser().exists():
        raise CliError(f"no data at {args.data}")
    size = tuple(args.image_size or meta.get("image_size") or ()) or None
    mean = args.mean or meta.get("mean")
    std = args.std or meta.get("std")
    split_seed = args.split_seed if args.split_seed is not None else int(meta.get("split_seed", 0))
    test_fraction = float(meta.get("test_fraction", TEST_FRACTION))

    if args.data is None:
        from fxquant.demo import synthetic_dataset

        synthetic = meta.get("synthetic")
        if not isinstance(synthetic, dict) or not set(synthetic) <= {"per_class", "size", "seed", "version"} \
                or not _bounded_scalars(synthetic):
            raise CliError(f"{args.file} records no usable synthetic-data parameters; pass --data PATH")
        data = synthetic_dataset(**synthetic)
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

    qmodel = fxquant.load(path, build_model(spec, num_classes, model_kwargs))
    log.info("%s; held-out test split: %d images (%d%%, stratified, split seed %d)", data.describe(),
             test_idx.numel(), round(100 * test_fraction), split_seed)
    q_acc, n = accuracy(qmodel, test, "compressed")
    avg = fxquant.report(qmodel).average_bits
    say(f"held-out test split: {n:,} images ({round(100 * test_fraction)}%, stratified, split seed {split_seed})")
    say(f"compressed {args.file}: top-1 {q_acc:.2f}% ({avg:.2f} average bits)")
    if args.checkpoint is not None:
        state, _ = load_checkpoint(args.checkpoint)
        float_model = build_model(spec, num_classes, model_kwargs)
        load_weights(float_model, state, args.checkpoint, spec, num_classes)
        f_acc, _ = accuracy(float_model, test, "float")
        say(f"float {args.checkpoint}: top-1 {f_acc:.2f}%  (compressed - float: {q_acc - f_acc:+.2f} points)")
    return 0


def _cmd_demo(args) -> int:
    from fxquant.demo import run_demo

    run_demo(args.out, seed=args.seed, data=args.data, quick=args.quick, epochs=args.epochs, quiet=args.quiet)
    return 0


_COMMANDS = {"compress": _cmd_compress, "inspect": _cmd_inspect, "eval": _cmd_eval, "demo": _cmd_demo}


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
    with progress_logging(args.quiet, args.debug), one_line_warnings():
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
