"""``fxquant compress``: a checkpoint and a data folder in, a ``.fxq`` file (and report, graph) out.

The float model is rebuilt from ``--model`` or the checkpoint's own record; the
calibration images (scored by the search) and the statistics images (for GPTQ
rounding and bias correction) both come from the training part of the seeded
stratified split, so ``fxquant eval`` can report accuracy on images neither saw.
The file records how to rebuild the model and its inputs (``metadata``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from fxquant.cli.models import build_model, check_file, check_model_spec, in_chans_kwargs, load_checkpoint, load_weights
from fxquant.cli.output import CliError, say
from fxquant.cli.parser import DEFAULT_CALIB
from fxquant.data.eurosat import EUROSAT_MEAN, EUROSAT_STD, calibration_indices
from fxquant.data.images import TEST_FRACTION, LabelledImages, load_data, stats_loader

__all__ = ["cmd_compress", "writable", "mib", "other_tensor_bytes"]

log = logging.getLogger("fxquant.cli")

_QUANT_SUFFIXES = (".packed_weight", ".weight_scale", ".weight_zero_point")


def mib(nbytes: float) -> str:
    """``nbytes`` as KiB or MiB, for one-line messages."""
    if nbytes >= 2**20:
        return f"{nbytes / 2**20:.2f} MiB"
    return f"{nbytes / 2**10:.1f} KiB"


def writable(path: str, what: str) -> Path:
    """``path`` as an output file whose folder exists (created); a folder itself is refused."""
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{what} {path} is a directory; give a file name")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create the folder for {what} {path}: {e.strerror or e}") from e
    return p


def other_tensor_bytes(header: dict) -> int:
    """Bytes of the stored tensors that are not packed weights, scales or zero points."""
    return sum(t["nbytes"] for t in header["tensors"] if not any(k.endswith(_QUANT_SUFFIXES) for k in t["keys"]))


@dataclass
class _FloatModel:
    """The float model to compress and how it was built (recorded in the file)."""

    model: nn.Module
    spec: str
    num_classes: int
    kwargs: dict
    meta: dict  # the checkpoint's own record (normalisation, split seed, ...)


def _float_model(args, ckpt_path: Path) -> _FloatModel:
    """Rebuild the architecture (``--model`` or the checkpoint's record) and load the checkpoint into it."""
    state, ckpt_meta = load_checkpoint(ckpt_path)
    spec = args.model or ckpt_meta.get("model")
    if not isinstance(spec, str) or not spec:
        raise CliError(f"--model is required: checkpoint {args.checkpoint} does not name its architecture")
    recorded_classes = ckpt_meta.get("num_classes")
    num_classes = args.num_classes or (recorded_classes if isinstance(recorded_classes, int) else 10)
    kwargs = ckpt_meta.get("model_kwargs")
    model_kwargs = dict(kwargs) if isinstance(kwargs, dict) and spec == ckpt_meta.get("model") else {}
    model_kwargs.update(in_chans_kwargs(args, spec))
    model = build_model(spec, num_classes, model_kwargs)
    load_weights(model, state, args.checkpoint, spec, num_classes)
    return _FloatModel(model, spec, num_classes, model_kwargs, ckpt_meta)


def _normalisation(args, ckpt_meta: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``--mean``/``--std``, else the checkpoint's record, else the EuroSAT statistics."""
    norm = ckpt_meta.get("normalization") if isinstance(ckpt_meta.get("normalization"), dict) else {}
    mean = tuple(args.mean or norm.get("mean") or EUROSAT_MEAN)
    std = tuple(args.std or norm.get("std") or EUROSAT_STD)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise CliError(f"normalisation needs 3 means and 3 positive stds, got mean={mean} std={std}")
    return mean, std


def _loaders(args, data: LabelledImages, split_seed: int, mean, std, size):
    """The calibration batches (scored by the search) and the statistics batches, both from the training split."""
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
    return calib, stats, calib_size, int(test_idx.numel())


def _write_outputs(args, qmodel, report, metadata: dict, out: Path, report_path, graph_path) -> None:
    import fxquant
    from fxquant.fileformat.saveload import read_header
    from fxquant.reporting.draw import draw

    nbytes = fxquant.save(qmodel, out, metadata=metadata)
    say(report.to_text())
    say()
    full = report.float32_bytes + other_tensor_bytes(read_header(out))
    say(f"wrote {out}: {nbytes:,} bytes ({mib(nbytes)}); the float32 model: about {mib(full)} "
        f"({full / max(1, nbytes):.1f}x larger)")
    if report_path:
        report_path.write_text(json.dumps({**report.to_dict(), "metadata": metadata}, indent=1))
        say(f"wrote {report_path}")
    if graph_path:
        drawing = draw(qmodel, graph_path, title=f"{metadata['model']}: average {report.average_bits:.2f} bits")
        say(f"wrote {drawing.svg} and {drawing.html}")


def cmd_compress(args) -> int:
    """Run ``fxquant compress`` with the parsed ``args``; returns the exit code."""
    import fxquant

    if args.mode != "adaptive" and args.method != "paper":
        raise CliError(f"--mode {args.mode} steers only --method paper (the default search is the sensitivity "
                       "search): add --method paper")
    ckpt_path = check_file(args.checkpoint, "checkpoint")
    data_root = Path(args.data).expanduser()
    if not data_root.exists():
        raise CliError(f"no data at {args.data}")
    if args.model is not None:
        check_model_spec(args.model)
    out = writable(args.out, "--out")
    report_path = writable(args.report, "--report") if args.report else None
    graph_path = writable(args.graph, "--graph") if args.graph else None

    fm = _float_model(args, ckpt_path)
    mean, std = _normalisation(args, fm.meta)
    split_seed = args.split_seed if args.split_seed is not None else int(fm.meta.get("split_seed", 0) or 0)
    data = load_data(data_root, args.image_size)
    log.info("%s", data.describe())
    size = tuple(args.image_size) if args.image_size else data.native_size
    calib, stats, calib_size, n_test = _loaders(args, data, split_seed, mean, std, size)
    if args.method == "paper":
        search = f"the paper's search, {args.mode} margin, T_init {args.margin:g}"
    elif args.target_bits is not None:
        search = f"budget {args.target_bits:g} average bits"
    elif args.max_bytes is not None:
        search = f"budget {args.max_bytes} bytes"
    else:
        search = f"the sensitivity search, accuracy drop <= {args.margin:g}"
    log.info("compressing %s: %s, %d calibration images from the training split (split seed %d; %d held out "
             "for 'fxquant eval')", fm.spec, search, calib_size, split_seed, n_test)
    qmodel = fxquant.compress(fm.model, calib, stats_loader=stats, margin=args.mode, t_init=args.margin,
                              verbose=not args.quiet, method=args.method, target_bits=args.target_bits,
                              max_bytes=args.max_bytes)
    metadata = {
        "created_by": "fxquant compress",
        "model": fm.spec,
        "model_kwargs": fm.kwargs,
        "num_classes": fm.num_classes,
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
    _write_outputs(args, qmodel, fxquant.report(qmodel), metadata, out, report_path, graph_path)
    if not args.quiet:
        log.info("held-out accuracy: fxquant eval %s --data %s --checkpoint %s", out, args.data, args.checkpoint)
    return 0
