"""One batch iterator for in-memory labelled images: :class:`ImageBatches`.

Data sets here live in memory as one tensor (EuroSAT's 27,000 patches, an
ImageFolder, the demo's synthetic cubes), so a pass over a calibration subset is
an index gather, cheap enough to repeat for every oracle call of a search.
``uint8`` RGB images are scaled to [0, 1] and standardised with the EuroSAT
statistics (:func:`normalize`), then re-standardised if other statistics are
asked for; float images (any number of bands) are standardised directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

__all__ = ["EUROSAT_MEAN", "EUROSAT_STD", "ImageBatches", "normalize", "resize"]

# Per-channel statistics of all 27,000 EuroSAT RGB images after scaling to [0, 1].
# Computed once by us from the decoded data (float64 mean / population std over
# N, H, W); hard-coded so that normalisation does not depend on the split.
EUROSAT_MEAN: tuple[float, float, float] = (0.3443760, 0.3802908, 0.4077703)
EUROSAT_STD: tuple[float, float, float] = (0.2026608, 0.1368966, 0.1155501)


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """Scale uint8 images ``[..., 3, H, W]`` to [0, 1] and standardise per channel (float32)."""
    if not isinstance(images_uint8, torch.Tensor) or images_uint8.dtype != torch.uint8:
        raise ValueError("'images_uint8' must be a torch.uint8 tensor")
    if images_uint8.dim() < 3 or images_uint8.shape[-3] != 3:
        raise ValueError(f"'images_uint8' must have shape [..., 3, H, W], got {tuple(images_uint8.shape)}")
    mean = torch.tensor(EUROSAT_MEAN, dtype=torch.float32).view(3, 1, 1)
    inv_std = 1.0 / torch.tensor(EUROSAT_STD, dtype=torch.float32).view(3, 1, 1)
    x = images_uint8.to(torch.float32).div_(255.0)
    return x.sub_(mean).mul_(inv_std)


def resize(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Bilinear, antialiased resize of a float batch (the same function for compress, eval and demo)."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)


def _channel_stats(values: Sequence[float], channels: int, what: str) -> torch.Tensor:
    stats = torch.as_tensor(values, dtype=torch.float32).flatten()
    if stats.numel() != channels:
        raise ValueError(f"'{what}' has {stats.numel()} values for images of {channels} channels")
    return stats.view(1, channels, 1, 1)


class ImageBatches:
    """Re-iterable normalised ``(x, y)`` batches over in-memory images ``[N, C, H, W]``.

    Args:
        images: ``uint8`` RGB (scaled to [0, 1], standardised with ``mean``/``std``,
            default the EuroSAT statistics) or floating point (standardised with
            ``mean``/``std``, which are then required).
        labels: int64 labels ``[N]``.
        indices: the samples to iterate over (default: all), in this order.
        size: ``(H, W)`` to resize each batch to (bilinear, antialiased), if it differs.
        shuffle: pass ``k`` uses the permutation seeded with ``seed + k``, so passes
            differ but are reproducible.
        augment: ``augment(x) -> x`` applied to the normalised batch, before resizing.
        drop_last: drop the last, smaller batch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None, *,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 size: tuple[int, int] | None = None, batch_size: int = 256, shuffle: bool = False,
                 seed: int = 0, augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 drop_last: bool = False) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError("'images' must be a tensor of shape [N, C, H, W]")
        if images.dtype == torch.uint8 and images.shape[1] != 3:
            raise ValueError(f"uint8 'images' must be RGB [N, 3, H, W], got {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"'images' must be uint8 or floating point, got {images.dtype}")
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"'labels' must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
        labels = labels.to(torch.int64)
        if labels.numel() != images.shape[0]:
            raise ValueError(f"'labels' has {labels.numel()} entries but 'images' has {images.shape[0]}")
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"'batch_size' must be >= 1, got {batch_size}")
        indices = torch.arange(images.shape[0]) if indices is None else \
            torch.as_tensor(indices, dtype=torch.int64).flatten()
        if indices.numel() and (indices.min() < 0 or indices.max() >= images.shape[0]):
            raise ValueError("'indices' out of range for 'images'")
        self.images, self.labels, self.indices = images, labels, indices
        self._standardize = self._standardizer(images, mean, std)
        self.size = None if size is None or tuple(size) == tuple(images.shape[-2:]) else tuple(size)
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.augment, self.drop_last = augment, bool(drop_last)
        self.epoch = 0  # number of passes started so far

    @staticmethod
    def _standardizer(images: torch.Tensor, mean, std) -> Callable[[torch.Tensor], torch.Tensor]:
        channels = images.shape[1]
        if images.dtype != torch.uint8:
            if mean is None or std is None:
                raise ValueError("float 'images' need 'mean' and 'std'")
            m, s = _channel_stats(mean, channels, "mean"), _channel_stats(std, channels, "std")
            return lambda x: (x.to(torch.float32) - m) / s
        mean = EUROSAT_MEAN if mean is None else tuple(float(v) for v in mean)
        std = EUROSAT_STD if std is None else tuple(float(v) for v in std)
        if mean == EUROSAT_MEAN and std == EUROSAT_STD:
            return normalize
        # Standardised with the EuroSAT statistics first (as every uint8 batch), then mapped
        # to the asked-for ones.
        em, es = _channel_stats(EUROSAT_MEAN, 3, "mean"), _channel_stats(EUROSAT_STD, 3, "std")
        m, s = _channel_stats(mean, 3, "mean"), _channel_stats(std, 3, "std")
        scale, shift = es / s, (em - m) / s
        return lambda x: normalize(x) * scale + shift

    def __len__(self) -> int:
        n = self.indices.numel()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = order[torch.randperm(order.numel(), generator=gen)]
        self.epoch += 1
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self._standardize(self.images[idx])
            if self.augment is not None:
                x = self.augment(x)
            yield resize(x, self.size), self.labels[idx]
