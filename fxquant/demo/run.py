"""``fxquant demo``: train, compress and report a small CNN end to end, offline, in about a minute.

With no data, :func:`run_demo` generates the SYNTHETIC 13-band dataset of
:mod:`fxquant.data.synthetic`; with ``data=PATH`` it reads a real EuroSAT root (or
any ImageFolder), RGB images downsampled to the demo's size, a few thousand
training images. It then trains :class:`~fxquant.demo.model.DemoCNN`, compresses it
with the default mixed-precision search (accuracy drop <= 0.5 points) on calibration
images from the training split, compares held-out test accuracy (float, compressed,
fixed widths) and writes the packed model, a float checkpoint, the report JSON, the annotated graph and the plot.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import fxquant
from fxquant.cli.output import say
from fxquant.data.eurosat import calibration_indices
from fxquant.data.images import LabelledImages, accuracy, load_data, stats_loader
from fxquant.data.synthetic import describe_synthetic, synthetic_dataset
from fxquant.demo.model import DemoCNN, train
from fxquant.logs import ensure_progress_output
from fxquant.reporting.draw import draw
from fxquant.reporting.plot import pyplot
from fxquant.export.check import onnx_demo_step

__all__ = ["DemoSizes", "DEFAULT_SIZES", "QUICK_SIZES", "MODEL_SPEC", "run_demo"]

log = logging.getLogger("fxquant.demo")

#: The architecture spec recorded in the demo's files (``fxquant eval`` rebuilds the model from it).
MODEL_SPEC = "fxquant.demo:DemoCNN"


@dataclass(frozen=True)
class DemoSizes:
    """How big the demo runs.

    Attributes:
        per_class: synthetic images per class (80% train, 20% held-out test).
        size: image side in pixels (real data is resized to it).
        width: :class:`DemoCNN` width.
        epochs: training epochs.
        calib: calibration images, from the training split.
        batch: training batch size.
        max_train: real data: training images used (stratified subset of the training split).
        max_test: real data: held-out test images used (stratified subset of the test split).
        sweep: fixed bit-widths compared on the test split.
    """

    per_class: int
    size: int
    width: int
    epochs: int
    calib: int
    batch: int
    max_train: int
    max_test: int
    sweep: tuple[int, ...]


DEFAULT_SIZES = DemoSizes(per_class=600, size=32, width=32, epochs=6, calib=1000, batch=64, max_train=4000,
                          max_test=2000, sweep=(8, 6, 4, 3, 2))
QUICK_SIZES = DemoSizes(per_class=40, size=16, width=8, epochs=3, calib=160, batch=32, max_train=300,
                        max_test=100, sweep=(8, 4, 2))


@dataclass
class _DemoData:
    """The data side of one demo run: the images, the split, normalisation and the loaders."""

    dataset: LabelledImages
    train_idx: torch.Tensor
    test_idx: torch.Tensor
    calib_idx: torch.Tensor
    mean: list[float]
    std: list[float]
    image_size: tuple[int, int]

    def loader(self, indices: torch.Tensor, **kwargs):
        return self.dataset.loader(indices, mean=self.mean, std=self.std, size=self.image_size, **kwargs)


def _channel_stats(data: LabelledImages, indices: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over ``indices`` (uint8 images on the [0, 1] scale), in chunks."""
    total = torch.zeros(data.channels, dtype=torch.float64)
    squares = torch.zeros(data.channels, dtype=torch.float64)
    count = 0
    for start in range(0, indices.numel(), 512):
        x = data.images[indices[start:start + 512]].to(torch.float64)
        if data.images.dtype == torch.uint8:
            x = x / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return [round(float(v), 7) for v in mean], [round(float(v), 7) for v in std]


def _prepare_data(data: str | Path | None, sizes: DemoSizes, seed: int) -> _DemoData:
    """Generate (or read) the images, split them and say what they are."""
    if data is None:
        log.info("[1/4] generating the synthetic dataset (seed %d)", seed)
        dataset = synthetic_dataset(sizes.per_class, sizes.size, seed)
        train_idx, test_idx = dataset.split(seed)
        say(describe_synthetic(dataset, train_idx.numel(), test_idx.numel(), seed))
    else:
        log.info("[1/4] loading %s", data)
        dataset = load_data(data, (sizes.size, sizes.size))  # an ImageFolder is resized when decoded
        full_train, full_test = dataset.split(seed)
        train_idx = calibration_indices(dataset.labels, full_train, min(sizes.max_train, full_train.numel()), seed)
        test_idx = calibration_indices(dataset.labels, full_test, min(sizes.max_test, full_test.numel()), seed)
        h, w = dataset.native_size
        say(f"fxquant demo on REAL data: {dataset.describe()}\n"
            f"  stratified 80/20 split (seed {seed}); using {train_idx.numel():,} of {full_train.numel():,} "
            f"training and {test_idx.numel():,} of {full_test.numel():,} held-out test images, "
            f"resized from {h}x{w} to {sizes.size}x{sizes.size} px to stay fast.")
    mean, std = _channel_stats(dataset, train_idx)
    calib_idx = calibration_indices(dataset.labels, train_idx, min(sizes.calib, train_idx.numel()), seed)
    return _DemoData(dataset, train_idx, test_idx, calib_idx, mean, std, (sizes.size, sizes.size))


def _metadata(d: _DemoData, model_kwargs: dict, seed: int, test_accuracy: dict) -> dict:
    """What the ``.fxq`` file records: how to rebuild the model and its inputs, and the results."""
    metadata = {
        "created_by": "fxquant demo",
        "model": MODEL_SPEC,
        "model_kwargs": model_kwargs,
        "num_classes": len(d.dataset.classes),
        "in_channels": d.dataset.channels,
        "image_size": list(d.image_size),
        "mean": d.mean,
        "std": d.std,
        "split_seed": seed,
        "test_fraction": 0.2,
        "calib_size": int(d.calib_idx.numel()),
        "data_kind": d.dataset.kind,
        "classes": list(d.dataset.classes),
        "checkpoint": "float_model.pt",
        "test_accuracy": test_accuracy,
    }
    if d.dataset.kind == "synthetic":
        metadata["synthetic"] = dict(d.dataset.info)
    return metadata


def _print_results(report, accuracies: dict, sweep: dict, sizes: dict) -> None:
    """The results on stdout: the per-layer table, held-out accuracies, sizes."""
    float_acc, q_acc, n_test = accuracies["float"], accuracies["compressed"], accuracies["images"]
    float_bytes, fxq_bytes = sizes["float32_state_dict_bytes"], sizes["fxq_file_bytes"]
    say()
    say(report.to_text())
    say()
    say(f"held-out test accuracy ({n_test:,} images never seen by the training or the search):")
    say(f"  float32                  {float_acc:6.2f}%")
    say(f"  compressed (this search) {q_acc:6.2f}%   at {report.average_bits:.2f} average bits "
        f"({q_acc - float_acc:+.2f} points)")
    say("  fixed width, every layer " + "   ".join(f"{b} bits {a:.2f}%" for b, a in sweep.items()))
    say(f"size: weights {report.float32_bytes / 1024:.1f} KiB float32 -> {report.packed_bytes / 1024:.1f} KiB "
        f"packed + {report.grid_bytes / 1024:.1f} KiB scales ({report.compression_ratio:.1f}x); "
        f"model {float_bytes / 1024:.1f} KiB float32 -> {fxq_bytes / 1024:.1f} KiB .fxq file "
        f"({float_bytes / fxq_bytes:.1f}x)")


def run_demo(out: str | Path = "fxquant-demo", *, seed: int = 0, data: str | Path | None = None,
             quick: bool = False, epochs: int | None = None, quiet: bool = False) -> dict:
    """Run the demo end to end; prints the story and results, writes its files into ``out``.

    Args:
        out: output folder (created; files in it are overwritten).
        seed: seeds the synthetic data, the split, the initialisation and the training.
        data: a EuroSAT root or ImageFolder to use instead of the synthetic data.
        quick: tiny sizes (:data:`QUICK_SIZES`), for tests.
        epochs: override the number of training epochs.
        quiet: no progress (training epochs, search log), results only.

    Returns a summary dict (accuracies, bits, sizes, paths), also stored in ``report.json``.
    """
    t0 = time.perf_counter()
    pyplot()  # the report plot is part of the job: fail now, not after training and searching
    sizes = QUICK_SIZES if quick else DEFAULT_SIZES
    epochs = int(epochs or sizes.epochs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not quiet:
        ensure_progress_output()  # progress lines when called from Python without logging set up
    d = _prepare_data(data, sizes, seed)
    test = d.loader(d.test_idx, batch_size=256)

    torch.manual_seed(seed)
    model_kwargs = {"in_channels": d.dataset.channels, "width": sizes.width}
    model = DemoCNN(len(d.dataset.classes), **model_kwargs)
    params = sum(p.numel() for p in model.parameters())
    log.info("[2/4] training DemoCNN (4 conv + 1 linear layers, %s parameters) for %d epochs on %s images",
             f"{params:,}", epochs, f"{d.train_idx.numel():,}")
    train(model, d.loader(d.train_idx, batch_size=sizes.batch, shuffle=True, seed=seed), epochs)

    log.info("[3/4] compressing: mixed-precision search (accuracy drop <= 0.5 points), %d calibration images "
             "from the training split", d.calib_idx.numel())
    stats = stats_loader(d.dataset, d.train_idx, d.calib_idx, seed, mean=d.mean, std=d.std, size=d.image_size)
    qmodel = fxquant.compress(model, d.loader(d.calib_idx, batch_size=256), stats_loader=stats,
                              t_init=0.5, verbose=not quiet)
    report = fxquant.report(qmodel)

    log.info("[4/4] evaluating on the %s held-out test images and writing %s", f"{d.test_idx.numel():,}", out)
    float_acc, n_test = accuracy(model, test, "float")
    q_acc, _ = accuracy(qmodel, test, "compressed")
    sweep = {b: accuracy(fxquant.quantize(model, b), test, f"{b}-bit")[0] for b in sizes.sweep}

    metadata = _metadata(d, model_kwargs, seed, {"float": float_acc, "compressed": q_acc, "images": n_test})
    fxq_path, ckpt_path = out / "model.fxq", out / "float_model.pt"
    fxq_bytes = fxquant.save(qmodel, fxq_path, metadata=metadata)
    torch.save({"state_dict": model.state_dict(), "model": MODEL_SPEC, "model_kwargs": model_kwargs,
                "num_classes": len(d.dataset.classes), "split_seed": seed,
                "normalization": {"mean": d.mean, "std": d.std}}, ckpt_path)
    float_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    summary = {
        "float_test_accuracy": float_acc, "compressed_test_accuracy": q_acc, "test_images": n_test,
        "fixed_bits_test_accuracy": {str(b): a for b, a in sweep.items()},
        "average_bits": report.average_bits, "bits": {lay.name: lay.bits for lay in report.layers},
        "float32_state_dict_bytes": float_bytes, "fxq_file_bytes": fxq_bytes,
    }
    onnx_summary, onnx_lines = onnx_demo_step(qmodel, out / "model.onnx", test, fxq_bytes)
    summary.update(onnx_summary)
    report_path = out / "report.json"
    report_path.write_text(json.dumps({**report.to_dict(), "demo": summary, "metadata": metadata}, indent=1))
    kind = d.dataset.kind
    drawing = draw(qmodel, out / "graph.svg", title=f"DemoCNN ({kind} data): average {report.average_bits:.2f} bits")
    fxquant.plot(report, out / "report.png", sweep=sweep,
                 results={"float32": (32, float_acc), "fxquant search": (report.average_bits, q_acc)},
                 title=f"fxquant demo ({kind} data): {report.average_bits:.2f} average bits, "
                       f"held-out top-1 {q_acc:.1f}% (float {float_acc:.1f}%)")
    written = [fxq_path.name, "model.onnx", ckpt_path.name, report_path.name, drawing.svg.name, drawing.html.name, "report.png"]

    _print_results(report, {"float": float_acc, "compressed": q_acc, "images": n_test}, sweep, summary)
    for line in onnx_lines:
        say(line)
    say(f"wrote {out}/: {', '.join(written)}")
    say(f"next: fxquant inspect {fxq_path}")
    eval_data = "" if data is None else f" --data {data}"
    say(f"      fxquant eval {fxq_path}{eval_data} --checkpoint {ckpt_path}")
    say(f"done in {time.perf_counter() - t0:.0f} s")
    return {**summary, "out": str(out), "files": written}
