"""EuroSAT (RGB) data utilities: decoding, caching, splits and cheap batch iterators.

The EuroSAT RGB data set (27,000 labelled 64x64 Sentinel-2 patches in 10 classes) is
expected in the layout used by :class:`torchvision.datasets.EuroSAT`::

    <root>/eurosat/2750/<ClassName>/<ClassName>_<n>.jpg

The JPEGs are decoded once with Pillow into a single ``uint8`` tensor of shape
``[N, 3, 64, 64]`` (about 330 MB) and cached in :func:`cache_dir`, outside the
repository. Everything downstream (splits, calibration subsets, batches) indexes into
that in-memory tensor, so iterating over a calibration set is cheap enough to be done
many times during a compression search.

Test images never enter the calibration subset: :func:`calibration_indices` draws only
from the training indices returned by :func:`stratified_split`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fxquant.data.batches import EUROSAT_MEAN, EUROSAT_STD, ImageBatches, normalize

__all__ = [
        "EUROSAT_MEAN",
    "EUROSAT_STD",
    "EuroSATArrays",
    "EuroSATSplits",
    "ImageBatches",
    "cache_dir",
    "calibration_indices",
    "eurosat_available",
    "eurosat_root",
    "eurosat_splits",
    "load_eurosat",
    "normalize",
    "stratified_split",
]

logger = logging.getLogger(__name__)

_CACHE_NAME = "eurosat_rgb_uint8.pt"
_CACHE_VERSION = 1
_IMAGE_SIZE = 64


ROOT_ENV = "FXQUANT_EUROSAT_ROOT"
#: Where EuroSAT is looked for when neither an argument nor ``$FXQUANT_EUROSAT_ROOT`` says:
#: relative to the current directory (a checkout's root next to the shared data), never
#: to the package, which may be installed anywhere.
CWD_DEFAULT_ROOT = Path("..") / "shared" / "data"


def eurosat_root(root: str | os.PathLike | None = None) -> Path:
    """The EuroSAT root to read: ``root``, else ``$FXQUANT_EUROSAT_ROOT``, else ``./../shared/data``."""
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (Path.cwd() / CWD_DEFAULT_ROOT).resolve()


def _where_looked(root: str | os.PathLike | None) -> str:
    return (f"the 'root' argument ({root}), ${ROOT_ENV} ({os.environ.get(ROOT_ENV) or 'unset'}), "
            f"or ./{CWD_DEFAULT_ROOT.as_posix()} from the current directory ({Path.cwd()})")


def cache_dir() -> Path:
    """Return the fxquant cache directory, creating it if needed.

    ``$FXQUANT_CACHE`` if set, otherwise ``~/.cache/fxquant``. Checkpoints and the
    decoded-data cache live here, outside the git repository.
    """
    env = os.environ.get("FXQUANT_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "fxquant"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _image_dir(root: str | os.PathLike | None) -> Path:
    """Map a torchvision-style root (or the ``2750`` folder itself) to the image folder."""
    base = eurosat_root(root)
    for candidate in (base / "eurosat" / "2750", base / "2750", base):
        if candidate.is_dir() and any(p.is_dir() for p in candidate.iterdir()):
            return candidate
    return base / "eurosat" / "2750"


def _list_files(image_dir: Path, root: str | os.PathLike | None) -> tuple[tuple[str, ...], list[Path], list[int]]:
    """Classes (sorted, like ImageFolder) and JPEG paths/labels in sorted order."""
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"EuroSAT image folder not found: {image_dir} (the root comes from {_where_looked(root)}; "
            f"expected <root>/eurosat/2750/<ClassName>/*.jpg)"
        )
    classes = tuple(sorted(p.name for p in image_dir.iterdir() if p.is_dir()))
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        jpgs = sorted(p for p in (image_dir / name).iterdir()
                      if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg"))
        files.extend(jpgs)
        labels.extend([label] * len(jpgs))
    if not files:
        raise FileNotFoundError(
            f"no EuroSAT JPEGs found under {image_dir} (the root comes from {_where_looked(root)})"
        )
    return classes, files, labels


def eurosat_available(root: str | os.PathLike | None = None) -> bool:
    """Return True if EuroSAT RGB JPEGs can be found under ``root`` (default root if None)."""
    image_dir = _image_dir(root)
    if not image_dir.is_dir():
        return False
    return any(any(d.glob("*.jpg")) for d in image_dir.iterdir() if d.is_dir())


@dataclass(frozen=True, eq=False)
class EuroSATArrays:
    """Decoded EuroSAT: ``images`` uint8 [N, 3, 64, 64], ``labels`` int64 [N], ``classes``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.numel())


def _decode(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    if arr.shape != (_IMAGE_SIZE, _IMAGE_SIZE, 3):
        raise ValueError(f"unexpected image shape {arr.shape} in {path}; expected 64x64 RGB")
    return arr


def _decode_all(files: Sequence[Path]) -> torch.Tensor:
    out = np.empty((len(files), _IMAGE_SIZE, _IMAGE_SIZE, 3), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = _decode(files[i])

    # Pillow releases the GIL while decoding, so threads give a real speed-up.
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, range(len(files)), chunksize=256))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _cache_key(image_dir: Path, classes: Sequence[str], files: Sequence[Path]) -> dict:
    digest = hashlib.sha1()
    for f in files:
        digest.update(str(f.relative_to(image_dir)).encode())
        digest.update(b"\0")
    return {
        "version": _CACHE_VERSION,
        "root": str(image_dir),
        "num_files": len(files),
        "classes": list(classes),
        "file_list_sha1": digest.hexdigest(),
    }


def load_eurosat(root: str | os.PathLike | None = None, *, use_cache: bool = True) -> EuroSATArrays:
    """Decode all EuroSAT RGB images into memory (deterministic, sorted file order).

    Args:
        root: torchvision-style root containing ``eurosat/2750`` (the ``2750`` folder
            itself is accepted too). Default: :func:`eurosat_root` (``$FXQUANT_EUROSAT_ROOT``, else ``./../shared/data``).
        use_cache: read/write the decoded tensors from/to
            ``cache_dir()/eurosat_rgb_uint8.pt``. The cache records the image folder,
            the file count and a hash of the file list and is rebuilt if they differ.

    Raises:
        FileNotFoundError: if the folder is missing or contains no JPEGs.
    """
    image_dir = _image_dir(root)
    classes, files, labels = _list_files(image_dir, root)
    key = _cache_key(image_dir, classes, files)
    cache_file = cache_dir() / _CACHE_NAME if use_cache else None

    if cache_file is not None and cache_file.is_file():
        try:
            blob = torch.load(cache_file, map_location="cpu", weights_only=True)
            if blob.get("key") == key:
                logger.debug("loaded EuroSAT from cache %s", cache_file)
                return EuroSATArrays(blob["images"], blob["labels"], tuple(blob["classes"]))
            logger.info("EuroSAT cache %s is for different data; rebuilding", cache_file)
        except Exception as exc:  # corrupt/old cache: rebuild it
            logger.warning("could not read EuroSAT cache %s (%s); rebuilding", cache_file, exc)

    logger.info("decoding %d EuroSAT JPEGs from %s", len(files), image_dir)
    images = _decode_all(files)
    label_t = torch.tensor(labels, dtype=torch.int64)
    if cache_file is not None:
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        torch.save({"key": key, "images": images, "labels": label_t,
                    "classes": list(classes)}, tmp)
        os.replace(tmp, cache_file)
        logger.info("cached decoded EuroSAT in %s", cache_file)
    return EuroSATArrays(images, label_t, classes)


def _check_labels(labels: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"'labels' must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    return labels.to(torch.int64)


def stratified_split(labels: torch.Tensor, test_fraction: float = 0.2,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, per-class stratified train/test split.

    In each class, ``round(n_c * test_fraction)`` images go to the test set.
    Returns sorted int64 index tensors ``(train_idx, test_idx)``.
    """
    labels = _check_labels(labels)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"'test_fraction' must be in (0, 1), got {test_fraction}")
    gen = torch.Generator().manual_seed(int(seed))
    train, test = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c, as_tuple=False).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_test = int(round(idx.numel() * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def calibration_indices(labels: torch.Tensor, train_idx: torch.Tensor, size: int = 2000,
                        seed: int = 0) -> torch.Tensor:
    """Stratified subset of ``size`` TRAINING indices (sorted int64 tensor).

    Class quotas are proportional to the class frequencies within ``train_idx``
    (largest-remainder rounding, so the total is exactly ``size``).
    """
    labels = _check_labels(labels)
    train_idx = torch.as_tensor(train_idx, dtype=torch.int64).flatten()
    if not 0 < size <= train_idx.numel():
        raise ValueError(f"'size' must be in [1, {train_idx.numel()}] (len(train_idx)), got {size}")
    train_labels = labels[train_idx]
    classes = torch.unique(train_labels).tolist()
    counts = [int((train_labels == c).sum()) for c in classes]
    exact = [size * n / train_idx.numel() for n in counts]
    quota = [math.floor(e) for e in exact]
    order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]), i))
    for i in order[: size - sum(quota)]:
        quota[i] += 1
    gen = torch.Generator().manual_seed(int(seed))
    picked = []
    for c, q in zip(classes, quota):
        idx = train_idx[train_labels == c]
        picked.append(idx[torch.randperm(idx.numel(), generator=gen)[:q]])
    return torch.cat(picked).sort().values


@dataclass(frozen=True, eq=False)
class EuroSATSplits:
    """Decoded data plus seeded train/test/calibration index tensors."""

    arrays: EuroSATArrays
    train_idx: torch.Tensor
    test_idx: torch.Tensor
    calib_idx: torch.Tensor
    batch_size: int = 256
    seed: int = 0

    def loader(self, indices: torch.Tensor, *, batch_size: int | None = None,
               **kwargs) -> ImageBatches:
        """:class:`ImageBatches` over ``indices`` (keyword args passed through)."""
        return ImageBatches(self.arrays.images, self.arrays.labels, indices,
                             batch_size=batch_size or self.batch_size, **kwargs)

    def calib_loader(self, batch_size: int | None = None) -> ImageBatches:
        """Unshuffled, unaugmented batches over the calibration subset."""
        return self.loader(self.calib_idx, batch_size=batch_size)

    def test_loader(self, batch_size: int | None = None) -> ImageBatches:
        """Unshuffled batches over the held-out test split."""
        return self.loader(self.test_idx, batch_size=batch_size)

    def stats_indices(self, size: int = 1024) -> torch.Tensor:
        """A seeded, stratified subset of training indices disjoint from the calibration subset."""
        rest = self.train_idx[~torch.isin(self.train_idx, self.calib_idx)]
        return calibration_indices(self.arrays.labels, rest, size, self.seed + 1)

    def stats_loader(self, size: int = 1024, batch_size: int | None = None) -> ImageBatches:
        """Batches for data-aware rounding's statistics: training images the search's oracle never
        scores (``fxquant.compress(..., stats_loader=...)``)."""
        return self.loader(self.stats_indices(size), batch_size=batch_size)


def eurosat_splits(root: str | os.PathLike | None = None, *, seed: int = 0,
                   test_fraction: float = 0.2, calib_size: int = 2000,
                   batch_size: int = 256, use_cache: bool = True) -> EuroSATSplits:
    """Load EuroSAT and build the standard seeded 80/20 split and calibration subset."""
    arrays = load_eurosat(root, use_cache=use_cache)
    train_idx, test_idx = stratified_split(arrays.labels, test_fraction, seed)
    calib_idx = calibration_indices(arrays.labels, train_idx, calib_size, seed)
    return EuroSATSplits(arrays, train_idx, test_idx, calib_idx, batch_size, seed)
