"""The data side of the ``fxquant`` command line: labelled images in memory, batches, accuracy.

:func:`load_data` reads a EuroSAT root (:func:`fxquant.data.eurosat.load_eurosat`)
or any ImageFolder (``<root>/<class>/<image>``, decoded with Pillow) into
:class:`LabelledImages`, which splits itself with the seeded stratified split
and yields normalised, resized :class:`fxquant.data.batches.ImageBatches`.
:func:`accuracy` is top-1 over such batches. Every problem is a
:class:`DataError` (a ``ValueError``) naming the file or folder at fault.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from fxquant.data.batches import ImageBatches

__all__ = ["TEST_FRACTION", "DataError", "LabelledImages", "load_data", "accuracy", "stats_loader"]

log = logging.getLogger("fxquant.data")

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TEST_FRACTION = 0.2


class DataError(ValueError):
    """The data cannot be used as given (missing folder, unreadable or mixed-size images, ...).

    A ``ValueError``: the command line prints it as its one-line error.
    """


@dataclass
class LabelledImages:
    """Labelled images in memory: uint8 RGB ``[N, 3, H, W]`` (EuroSAT, ImageFolder) or float (synthetic)."""

    kind: str  # "eurosat" | "imagefolder" | "synthetic"
    images: object  # torch.Tensor
    labels: object  # torch.Tensor, int64 [N]
    classes: tuple[str, ...]
    root: str | None = None
    info: dict = field(default_factory=dict)  # how to regenerate it (synthetic)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def native_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def split(self, seed: int, test_fraction: float = TEST_FRACTION):
        """The seeded stratified ``(train_idx, test_idx)`` (:func:`fxquant.data.eurosat.stratified_split`)."""
        from fxquant.data.eurosat import stratified_split

        return stratified_split(self.labels, test_fraction, seed)

    def loader(self, indices, *, mean, std, size=None, batch_size=128, shuffle=False, seed=0):
        """Normalised :class:`ImageBatches` over ``indices``, resized to ``size`` (``(H, W)``) if it differs."""
        return ImageBatches(self.images, self.labels, indices, mean=mean, std=std, size=size,
                            batch_size=batch_size, shuffle=shuffle, seed=seed)

    def describe(self) -> str:
        where = f" at {self.root}" if self.root else ""
        h, w = self.native_size
        return (f"{self.kind} data{where}: {len(self.labels):,} images of {self.channels}x{h}x{w}, "
                f"{len(self.classes)} classes")


def _eurosat_folder(root: Path) -> bool:
    return (root / "eurosat" / "2750").is_dir() or (root / "2750").is_dir() or root.name == "2750"


def _decode_folder(root: Path, image_size: tuple[int, int] | None):
    """Decode an ImageFolder (``root/<class>/<image>``) into uint8 RGB ``[N, 3, H, W]`` with Pillow."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch
    from PIL import Image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_EXTENSIONS)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"no images found under {root} (expected {root}/<class>/<image>.png|jpg|... or a EuroSAT "
                       "root holding eurosat/2750)")
    log.info("decoding %d images of %d classes from %s", len(files), len(classes), root)

    def decode(path: Path):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if image_size is not None and im.size != (image_size[1], image_size[0]):
                    im = im.resize((image_size[1], image_size[0]), Image.BILINEAR)
                return np.asarray(im)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}") from e

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        arrays = list(pool.map(decode, files))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        (h1, w1, _), (h2, w2, _) = sorted(shapes)[:2]
        raise DataError(f"the images under {root} have different sizes ({h1}x{w1}, {h2}x{w2}, ...); pass "
                       "--image-size N to resize them")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels, dtype=torch.int64), tuple(classes)


def load_data(path: str | os.PathLike, image_size: tuple[int, int] | None = None) -> LabelledImages:
    """A EuroSAT root (decoded with :func:`fxquant.data.eurosat.load_eurosat`, cached) or any ImageFolder."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"no data at {path}")
    if not root.is_dir():
        raise DataError(f"{path} is not a folder (expected a EuroSAT root or an ImageFolder)")
    if _eurosat_folder(root):
        from fxquant.data.eurosat import cache_dir, load_eurosat

        log.info("reading EuroSAT from %s (decoded images cached in %s)", root, cache_dir())
        arrays = load_eurosat(root)
        return LabelledImages("eurosat", arrays.images, arrays.labels, tuple(arrays.classes), root=str(root))
    images, labels, classes = _decode_folder(root, image_size)
    return LabelledImages("imagefolder", images, labels, classes, root=str(root))


def accuracy(model, loader, what: str) -> tuple[float, int]:
    """Top-1 accuracy (%) and sample count of ``model`` over ``loader``; progress every few seconds."""
    import torch

    correct = seen = 0
    indices = getattr(loader, "indices", None)
    total = int(indices.numel()) if indices is not None else None
    last = time.perf_counter()
    with torch.inference_mode():
        for x, y in loader:
            out = model(x)
            if isinstance(out, (tuple, list)):
                out = out[0]
            correct += int((out.argmax(1) == y).sum())
            seen += int(y.numel())
            if time.perf_counter() - last > 5:
                last = time.perf_counter()
                log.info("  %s: %s/%s images", what, f"{seen:,}", f"{total:,}" if total else "?")
    if seen == 0:
        raise DataError(f"{what}: no images to evaluate")
    return 100.0 * correct / seen, seen


def stats_loader(data: "LabelledImages", train_idx, calib_idx, seed: int, *, mean, std, size=None,
                 batch_size: int = 256, max_images: int = 1024):
    """Batches of training images outside the calibration subset, for data-aware rounding's
    statistics (``fxquant.compress(..., stats_loader=...)``); None when there are none left."""
    import torch

    from fxquant.data.eurosat import calibration_indices

    rest = train_idx[~torch.isin(train_idx, calib_idx)]
    if rest.numel() == 0:
        return None
    idx = calibration_indices(data.labels, rest, min(max_images, int(rest.numel())), seed + 1)
    return data.loader(idx, mean=mean, std=std, size=size, batch_size=batch_size)
