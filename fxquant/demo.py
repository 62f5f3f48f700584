"""``fxquant demo``: train, compress and report a small CNN end to end, offline, in about a minute.

With no data it generates a deterministic **synthetic** dataset (:func:`synthetic_dataset`):
10 land-cover-like classes of 13-band (Sentinel-2-like) 32x32 images. Each class mixes
two made-up "materials" (rough reflectance curves shaped like water, vegetation, soil,
concrete, ...; drawn per image from a few choices, with gain, spectral jitter and haze)
through a class texture (stripes, blobs, speckle, a road, blocks, a smooth field, an
orchard grid, a meander), plus sensor noise. Spectra overlap between classes, so a CNN
has to use the textures too: a small one reaches roughly 90-95% held-out accuracy after
a few epochs, not 100%. It is *not* real satellite imagery.

:func:`run_demo` then trains :class:`DemoCNN` (4 conv layers + a linear head), compresses
it with the adaptive bit-width search on calibration images from the training split,
compares held-out test accuracy (float, compressed, fixed widths) and writes the packed
model, a float checkpoint, the report JSON, the annotated graph and the plots. With
``data=PATH`` it does the same on a real EuroSAT root (or any ImageFolder), RGB images
downsampled to 32x32, on a few thousand training images.
"""

from __future__ import annotations

import json
import logging
import math
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fxquant.data.images import LabelledImages, accuracy, load_data, stats_loader
from fxquant.cli.output import say
from fxquant.reporting.draw import draw

__all__ = ["BANDS", "SYNTHETIC_CLASSES", "SYNTHETIC_VERSION", "DemoCNN", "DemoSizes", "DEFAULT_SIZES",
           "QUICK_SIZES", "synthetic_dataset", "run_demo"]

log = logging.getLogger("fxquant.demo")

#: Sentinel-2 band names of the synthetic images' channels.
BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
#: Bumped whenever :func:`synthetic_dataset` would generate different images for the same arguments.
SYNTHETIC_VERSION = 1

# Made-up reflectance curves (0..1) over BANDS, only roughly shaped like the real materials.
_MATERIALS = {
    "water": (0.08, 0.07, 0.06, 0.04, 0.03, 0.02, 0.02, 0.015, 0.012, 0.01, 0.002, 0.005, 0.003),
    "forest": (0.03, 0.03, 0.05, 0.03, 0.08, 0.22, 0.28, 0.30, 0.31, 0.29, 0.004, 0.15, 0.07),
    "grass": (0.05, 0.05, 0.09, 0.06, 0.12, 0.28, 0.33, 0.35, 0.36, 0.33, 0.005, 0.22, 0.12),
    "crop": (0.04, 0.045, 0.08, 0.05, 0.11, 0.30, 0.38, 0.40, 0.41, 0.37, 0.005, 0.20, 0.10),
    "soil": (0.10, 0.12, 0.15, 0.19, 0.21, 0.23, 0.25, 0.27, 0.28, 0.27, 0.008, 0.33, 0.28),
    "concrete": (0.15, 0.17, 0.20, 0.22, 0.23, 0.24, 0.25, 0.26, 0.26, 0.25, 0.01, 0.28, 0.25),
    "asphalt": (0.07, 0.08, 0.09, 0.10, 0.105, 0.11, 0.115, 0.12, 0.12, 0.12, 0.004, 0.14, 0.13),
    "roof": (0.08, 0.09, 0.11, 0.20, 0.22, 0.24, 0.25, 0.26, 0.27, 0.26, 0.008, 0.30, 0.24),
    "shrub": (0.06, 0.07, 0.10, 0.11, 0.15, 0.22, 0.25, 0.27, 0.28, 0.27, 0.006, 0.30, 0.20),
}
_NOISE = 0.04  # sensor noise (reflectance units)
_JITTER = 0.12  # per-band relative spectral variation of a material
_MIN_CONTRAST = 0.5  # texture contrast drawn in [_MIN_CONTRAST, 1]


# ----------------------------------------------------------------------------- textures
# Each texture maps (n, size, generator) to a mask [n, size, size] in [0, 1]: 1 = first material.


def _uniform(n, lo, hi, gen):
    return lo + (hi - lo) * torch.rand(n, 1, 1, generator=gen)


def _rotated(n, size, gen):
    """Pixel coordinates rotated by a random angle about a random centre: (along, across)."""
    grid = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    theta = _uniform(n, 0.0, math.pi, gen)
    cx, cy = _uniform(n, size / 4, 3 * size / 4, gen), _uniform(n, size / 4, 3 * size / 4, gen)
    u = (xx - cx) * torch.cos(theta) + (yy - cy) * torch.sin(theta)
    v = -(xx - cx) * torch.sin(theta) + (yy - cy) * torch.cos(theta)
    return u, v


def _smooth_noise(n, size, cells, gen):
    """Standardised random field with ``cells`` x ``cells`` degrees of freedom (bicubic upsampling)."""
    z = torch.randn(n, 1, cells, cells, generator=gen)
    z = F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    return (z - z.mean((1, 2), keepdim=True)) / (z.std((1, 2), keepdim=True) + 1e-6)


def _stripes(n, size, gen):  # rows of a ploughed / sown field
    u, _ = _rotated(n, size, gen)
    period = _uniform(n, 4, 8, gen) * size / 32
    return torch.sigmoid(4 * torch.sin(2 * math.pi * u / period))


def _blobs(n, size, gen):  # tree crowns
    return torch.sigmoid(2.5 * _smooth_noise(n, size, max(2, size // 4), gen))


def _speckle(n, size, gen):  # patchy low vegetation
    return torch.sigmoid(1.5 * _smooth_noise(n, size, max(2, size // 2), gen)
                         + 1.5 * torch.randn(n, size, size, generator=gen))


def _field(n, size, gen):  # smooth, nearly uniform surface
    return torch.sigmoid(_smooth_noise(n, size, 3, gen))


def _road(n, size, gen):  # one straight line
    _, v = _rotated(n, size, gen)
    return torch.sigmoid(2 * (_uniform(n, 1.0, 2.0, gen) * size / 32 - v.abs()))


def _blocks(cells):  # buildings: a random grid of filled cells
    def texture(n, size, gen):
        cells_here = max(2, cells * size // 32)
        z = (torch.rand(n, 1, cells_here, cells_here, generator=gen) < 0.5).float()
        z = F.interpolate(z, size=(size, size), mode="nearest")[:, 0]
        shift = torch.randint(0, max(1, size // cells_here), (2,), generator=gen).tolist()
        return torch.roll(z, shift, (1, 2)) * 0.9 + 0.05
    return texture


def _orchard(n, size, gen):  # a rotated grid of dots
    u, v = _rotated(n, size, gen)
    period = _uniform(n, 5, 7, gen) * size / 32
    return torch.sigmoid(4 * (torch.cos(2 * math.pi * u / period) + torch.cos(2 * math.pi * v / period) - 1))


def _meander(n, size, gen):  # a winding band
    u, v = _rotated(n, size, gen)
    s = size / 32
    centre = _uniform(n, 2, 5, gen) * s * torch.sin(2 * math.pi * u / (_uniform(n, 12, 24, gen) * s)
                                                    + _uniform(n, 0, 2 * math.pi, gen))
    return torch.sigmoid(2 * (_uniform(n, 1.5, 3.0, gen) * s - (v - centre).abs()))


# (class name, texture, texture name, first materials, second materials): per image, one of each list.
_CLASSES = (
    ("AnnualCrop", _stripes, "stripes", ("crop", "grass", "soil"), ("soil", "shrub")),
    ("Forest", _blobs, "blobs", ("forest",), ("shrub", "forest", "grass")),
    ("HerbaceousVegetation", _speckle, "speckle", ("grass", "shrub"), ("shrub", "soil", "forest")),
    ("Highway", _road, "road", ("asphalt", "concrete"), ("grass", "crop", "soil", "shrub")),
    ("Industrial", _blocks(4), "large blocks", ("concrete", "roof"), ("asphalt", "soil")),
    ("Pasture", _field, "smooth field", ("grass", "crop"), ("grass", "shrub")),
    ("PermanentCrop", _orchard, "dot grid", ("crop", "forest", "shrub"), ("soil", "grass")),
    ("Residential", _blocks(8), "small blocks", ("roof", "concrete"), ("grass", "forest", "asphalt")),
    ("River", _meander, "meander", ("water",), ("grass", "forest", "crop", "shrub")),
    ("SeaLake", _field, "smooth field", ("water",), ("water", "soil")),
)
#: Class names of the synthetic dataset, in label order.
SYNTHETIC_CLASSES = tuple(c[0] for c in _CLASSES)


def _material(names, n, gen):
    """Per image: one of ``names``, with a random gain and per-band jitter; ``[n, bands, 1, 1]``."""
    table = torch.tensor([_MATERIALS[k] for k in names], dtype=torch.float32)
    base = table[torch.randint(0, len(names), (n,), generator=gen)]
    gain = 0.75 + 0.5 * torch.rand(n, 1, generator=gen)
    jitter = 1 + _JITTER * torch.randn(n, len(BANDS), generator=gen)
    return (base * gain * jitter).view(n, len(BANDS), 1, 1)


def synthetic_dataset(per_class: int = 600, size: int = 32, seed: int = 0,
                      version: int = SYNTHETIC_VERSION) -> LabelledImages:
    """The demo's SYNTHETIC 10-class, 13-band land-cover-like dataset (deterministic in its arguments).

    Returns a :class:`fxquant.data.images.LabelledImages` of ``10 * per_class`` float16 reflectance
    images ``[N, 13, size, size]`` (labels in class order, see :data:`SYNTHETIC_CLASSES`).
    """
    if version != SYNTHETIC_VERSION:
        raise ValueError(f"synthetic data version {version} was generated by another fxquant; this one "
                         f"generates version {SYNTHETIC_VERSION}")
    if per_class < 1 or size < 8:
        raise ValueError(f"synthetic_dataset needs per_class >= 1 and size >= 8, got {per_class}, {size}")
    gen = torch.Generator().manual_seed(int(seed))
    images, labels = [], []
    fade = torch.linspace(1.0, 0.0, len(BANDS)).view(1, -1, 1, 1)  # haze: strongest in the blue bands
    for label, (_, texture, _, first, second) in enumerate(_CLASSES):
        mask = texture(per_class, size, gen).unsqueeze(1)
        a, b = _material(first, per_class, gen), _material(second, per_class, gen)
        contrast = _uniform(per_class, _MIN_CONTRAST, 1.0, gen).unsqueeze(1)
        x = b + contrast * mask * (a - b)
        x = x + _uniform(per_class, 0.0, 0.05, gen).unsqueeze(1) * fade
        x = x + _NOISE * torch.randn(x.shape, generator=gen)
        images.append(x.to(torch.float16))
        labels.append(torch.full((per_class,), label, dtype=torch.int64))
    info = {"per_class": int(per_class), "size": int(size), "seed": int(seed), "version": SYNTHETIC_VERSION}
    return LabelledImages("synthetic", torch.cat(images), torch.cat(labels), SYNTHETIC_CLASSES, info=info)


# ----------------------------------------------------------------------------- model


class DemoCNN(nn.Module):
    """A small CNN: 4 conv-BN-ReLU blocks (3 followed by max-pooling), global average pooling, a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = len(BANDS), width: int = 24):
        super().__init__()
        w = int(width)
        self.conv1, self.bn1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.conv2, self.bn2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.conv3, self.bn3 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.conv4, self.bn4 = nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w)
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2)
        x = F.relu(self.bn4(self.conv4(x)))
        return self.head(x.mean(dim=(2, 3)))


@dataclass(frozen=True)
class DemoSizes:
    """How big the demo runs."""

    per_class: int  # synthetic images per class (80% train, 20% held-out test)
    size: int  # image side in pixels (real data is resized to it)
    width: int  # DemoCNN width
    epochs: int
    calib: int  # calibration images, from the training split
    batch: int  # training batch size
    max_train: int  # real data: training images used (stratified subset of the training split)
    max_test: int  # real data: held-out test images used (stratified subset of the test split)
    sweep: tuple[int, ...]  # fixed bit-widths compared on the test split


DEFAULT_SIZES = DemoSizes(per_class=600, size=32, width=32, epochs=6, calib=1000, batch=64, max_train=4000,
                          max_test=2000, sweep=(8, 6, 4, 3, 2))
QUICK_SIZES = DemoSizes(per_class=40, size=16, width=8, epochs=3, calib=160, batch=32, max_train=300,
                        max_test=100, sweep=(8, 4, 2))


# ----------------------------------------------------------------------------- pipeline


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


def _train(model: nn.Module, loader, epochs: int, lr: float = 5e-3) -> None:
    steps = epochs * len(loader)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    for epoch in range(epochs):
        model.train()
        start, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        for x, y in loader:
            if y.numel() < 2:  # BatchNorm needs two samples
                continue
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            loss_sum += loss.item() * y.numel()
            correct += int((out.argmax(1) == y).sum())
            seen += y.numel()
        log.info("  epoch %d/%d  loss %.3f  train accuracy %.1f%%  (%.1f s)", epoch + 1, epochs,
                 loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1), time.perf_counter() - start)
    model.eval()


def _describe_synthetic(data: LabelledImages, n_train: int, n_test: int, seed: int) -> str:
    per_class, size = data.info["per_class"], data.info["size"]
    textures = ", ".join(f"{name} ({tex})" for name, _, tex, _, _ in _CLASSES)
    text = (f"{10 * per_class:,} images of {len(BANDS)} bands x {size}x{size} px (a Sentinel-2-like band set), "
            f"10 land-cover-like classes, each a mix of made-up material spectra through a class texture, with "
            f"noise: {textures}. Stratified 80/20 split (seed {seed}): {n_train:,} training / {n_test:,} "
            "held-out test images.")
    return "fxquant demo on SYNTHETIC data (generated here, not real satellite images):\n" + \
        textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="  ")


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
    import fxquant
    from fxquant import passes
    from fxquant.api import _ensure_progress_output
    from fxquant.data.eurosat import calibration_indices

    t0 = time.perf_counter()
    sizes = QUICK_SIZES if quick else DEFAULT_SIZES
    epochs = int(epochs or sizes.epochs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not quiet:
        _ensure_progress_output()  # progress lines when called from Python without logging set up

    # ---- data
    if data is None:
        log.info("[1/4] generating the synthetic dataset (seed %d)", seed)
        dataset = synthetic_dataset(sizes.per_class, sizes.size, seed)
        train_idx, test_idx = dataset.split(seed)
        say(_describe_synthetic(dataset, train_idx.numel(), test_idx.numel(), seed))
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
    image_size = (sizes.size, sizes.size)
    loader = dataset.loader(train_idx, mean=mean, std=std, size=image_size, batch_size=sizes.batch,
                            shuffle=True, seed=seed)
    test = dataset.loader(test_idx, mean=mean, std=std, size=image_size, batch_size=256)
    calib_size = min(sizes.calib, train_idx.numel())
    calib_idx = calibration_indices(dataset.labels, train_idx, calib_size, seed)
    calib = dataset.loader(calib_idx, mean=mean, std=std, size=image_size, batch_size=256)
    stats = stats_loader(dataset, train_idx, calib_idx, seed, mean=mean, std=std, size=image_size)

    # ---- train
    torch.manual_seed(seed)
    model_kwargs = {"in_channels": dataset.channels, "width": sizes.width}
    model = DemoCNN(len(dataset.classes), **model_kwargs)
    params = sum(p.numel() for p in model.parameters())
    log.info("[2/4] training DemoCNN (4 conv + 1 linear layers, %s parameters) for %d epochs on %s images",
             f"{params:,}", epochs, f"{train_idx.numel():,}")
    _train(model, loader, epochs)

    # ---- compress
    log.info("[3/4] compressing: adaptive bit-width search (T_init 0.5 points), %d calibration images from "
             "the training split", calib_size)
    qmodel = fxquant.compress(model, calib, stats_loader=stats, margin="adaptive", t_init=0.5, verbose=not quiet)
    report = fxquant.report(qmodel)

    # ---- evaluate on the held-out split
    log.info("[4/4] evaluating on the %s held-out test images and writing %s", f"{test_idx.numel():,}", out)
    float_acc, n_test = accuracy(model, test, "float")
    q_acc, _ = accuracy(qmodel, test, "compressed")
    sweep = {b: accuracy(fxquant.quantize(model, b), test, f"{b}-bit")[0] for b in sizes.sweep}

    # ---- write
    spec = "fxquant.demo:DemoCNN"
    metadata = {
        "created_by": "fxquant demo",
        "model": spec,
        "model_kwargs": model_kwargs,
        "num_classes": len(dataset.classes),
        "in_channels": dataset.channels,
        "image_size": list(image_size),
        "mean": mean,
        "std": std,
        "split_seed": seed,
        "test_fraction": 0.2,
        "calib_size": calib_size,
        "data_kind": dataset.kind,
        "classes": list(dataset.classes),
        "checkpoint": "float_model.pt",
        "test_accuracy": {"float": float_acc, "compressed": q_acc, "images": n_test},
    }
    if dataset.kind == "synthetic":
        metadata["synthetic"] = dict(dataset.info)
    fxq_path, ckpt_path = out / "model.fxq", out / "float_model.pt"
    fxq_bytes = fxquant.save(qmodel, fxq_path, metadata=metadata)
    torch.save({"state_dict": model.state_dict(), "model": spec, "model_kwargs": model_kwargs,
                "num_classes": len(dataset.classes), "split_seed": seed,
                "normalization": {"mean": mean, "std": std}}, ckpt_path)
    float_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    summary = {
        "float_test_accuracy": float_acc, "compressed_test_accuracy": q_acc, "test_images": n_test,
        "fixed_bits_test_accuracy": {str(b): a for b, a in sweep.items()},
        "average_bits": report.average_bits, "bits": {lay.name: lay.bits for lay in report.layers},
        "float32_state_dict_bytes": float_bytes, "fxq_file_bytes": fxq_bytes,
    }
    from fxquant.export.check import onnx_demo_step  # the ONNX step (issue 16)

    onnx_summary, onnx_lines = onnx_demo_step(qmodel, out / "model.onnx", test, fxq_bytes)
    summary.update(onnx_summary)
    report_path = out / "report.json"
    report_path.write_text(json.dumps({**report.to_dict(), "demo": summary, "metadata": metadata}, indent=1))
    drawing = draw(qmodel, out / "graph.svg",
                          title=f"DemoCNN ({dataset.kind} data): average {report.average_bits:.2f} bits")
    written = [fxq_path.name, "model.onnx", ckpt_path.name, report_path.name, drawing.svg.name, drawing.html.name]
    plot_note = ""
    try:
        fxquant.plot(report, out / "report.png", sweep=sweep,
                     results={"float32": (32, float_acc), "adaptive search": (report.average_bits, q_acc)},
                     title=f"fxquant demo ({dataset.kind} data): {report.average_bits:.2f} average bits, "
                           f"held-out top-1 {q_acc:.1f}% (float {float_acc:.1f}%)")
        written.append("report.png")
    except ImportError:
        plot_note = "plots skipped: matplotlib is not installed (pip install 'fxquant[viz]')"

    # ---- results
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
    for line in onnx_lines:
        say(line)
    if plot_note:
        say(plot_note)
    say(f"wrote {out}/: {', '.join(written)}")
    say(f"next: fxquant inspect {fxq_path}")
    eval_data = "" if data is None else f" --data {data}"
    say(f"      fxquant eval {fxq_path}{eval_data} --checkpoint {ckpt_path}")
    say(f"done in {time.perf_counter() - t0:.0f} s")
    return {**summary, "out": str(out), "files": written}
