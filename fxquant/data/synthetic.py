"""A SYNTHETIC 10-class, 13-band land-cover-like dataset, generated in memory (the demo's data).

:func:`synthetic_dataset` draws 10 land-cover-like classes of 13-band (Sentinel-2-like)
images. Each class mixes two made-up "materials" (rough reflectance curves shaped like
water, vegetation, soil, concrete, ...; drawn per image from a few choices, with gain,
spectral jitter and haze) through a class texture (stripes, blobs, speckle, a road,
blocks, a smooth field, an orchard grid, a meander), plus sensor noise. Spectra overlap
between classes, so a CNN has to use the textures too: a small one reaches roughly
90-95% held-out accuracy after a few epochs, not 100%. It is *not* real satellite imagery.
"""

from __future__ import annotations

import math
import textwrap

import torch
import torch.nn.functional as F

from fxquant.data.images import LabelledImages

__all__ = ["BANDS", "SYNTHETIC_CLASSES", "SYNTHETIC_VERSION", "synthetic_dataset", "describe_synthetic"]

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


def describe_synthetic(data: LabelledImages, n_train: int, n_test: int, seed: int) -> str:
    """A few lines saying what the synthetic data are (and that they are not real images)."""
    per_class, size = data.info["per_class"], data.info["size"]
    textures = ", ".join(f"{name} ({tex})" for name, _, tex, _, _ in _CLASSES)
    text = (f"{10 * per_class:,} images of {len(BANDS)} bands x {size}x{size} px (a Sentinel-2-like band set), "
            f"10 land-cover-like classes, each a mix of made-up material spectra through a class texture, with "
            f"noise: {textures}. Stratified 80/20 split (seed {seed}): {n_train:,} training / {n_test:,} "
            "held-out test images.")
    return "fxquant demo on SYNTHETIC data (generated here, not real satellite images):\n" + \
        textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="  ")
