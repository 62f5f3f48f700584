"""A small zoo of custom architectures torchvision does not cover, shared by the pass tests.

Each entry: name -> (factory, input shape, expected layer names in execution order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvZoo(nn.Module):
    """Grouped, depthwise, dilated, reflect-padded, bias-free, tiny and zero-channel convs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.pointwise = nn.Conv2d(8, 4, 1, bias=False)
        self.tiny = nn.Conv2d(4, 1, 1)  # 4 weights: at 1 bit, half a byte
        self.head = nn.Linear(1, 5)
        with torch.no_grad():
            self.pointwise.weight[2].zero_()  # a channel of all-zero weights

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.grouped(x))
        x = F.relu(self.depthwise(x))
        x = self.tiny(self.pointwise(x))
        return self.head(x.mean(dim=(2, 3)))


class Spectral1d(nn.Module):
    """Per-pixel spectra: 13 bands as a 1-D signal."""

    def __init__(self, bands: int = 13):
        super().__init__()
        self.c1 = nn.Conv1d(1, 6, 5, padding=2)
        self.c2 = nn.Conv1d(6, 6, 3, padding=1, padding_mode="circular")
        self.fc = nn.Linear(6 * bands, 4)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.c1(x))))
        return self.fc(x.flatten(1))


class Hyperspectral3d(nn.Module):
    """A 3-D conv net over a (bands, height, width) cube."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv3d(1, 4, (7, 3, 3), padding=(3, 1, 1))
        self.c2 = nn.Conv3d(4, 4, 3, stride=(2, 1, 1), padding=1, padding_mode="replicate")
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.c1(x))))
        return self.fc(x.mean(dim=(2, 3, 4)))


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.shared(x))
        x = F.relu(self.shared(x))  # same module, same weights: one layer
        return self.out(x.mean(dim=(2, 3)))


class Tied(nn.Module):
    """Two Linear modules sharing one weight Parameter."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.c = nn.Linear(6, 2)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


class Functional(nn.Module):
    """Bare Parameters fed to F.conv2d and to a matmul through .t()."""

    def __init__(self):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(6, 3, 3, 3) * 0.2)
        self.proj = nn.Parameter(torch.randn(5, 6) * 0.3)
        self.pos = nn.Parameter(torch.randn(1, 6, 1, 1))  # not a weight of a matmul: stays float

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.kernel, padding=1) + self.pos)
        return x.mean(dim=(2, 3)) @ self.proj.t()


class TinyViT(nn.Module):
    """Patch embedding + nn.MultiheadAttention encoder block + head."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = x + self.mlp(x)
        return self.head(x.mean(dim=1))


class DataDependentBlock(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace through it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:
            return F.relu(self.conv(x))
        return self.conv(x)


class WithUntraceableBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = DataDependentBlock()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean(dim=(2, 3)))


class UntraceableTop(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        for _ in range(int(x.abs().max()) % 3 + 1):  # loop count depends on data
            x = self.conv(x)
        return x


class TinyResNet(nn.Module):
    """A few channels, but ResNet18's names for its first and last layers (``conv1``,
    ``layer4.1.conv2``, ``fc``), so the documentation's snippets run on it in a second."""

    def __init__(self, num_classes: int = 10, width: int = 4):
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        down = nn.Sequential(nn.Conv2d(width, 2 * width, 1, 2, bias=False), nn.BatchNorm2d(2 * width))
        self.layer4 = nn.Sequential(BasicBlock(width, 2 * width, 2, down), BasicBlock(2 * width, 2 * width))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.layer4(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


ZOO = {
    "conv_zoo": (ConvZoo, (2, 3, 12, 12),
                 ["stem", "grouped", "depthwise", "pointwise", "tiny", "head"]),
    "spectral1d": (Spectral1d, (2, 1, 13), ["c1", "c2", "fc"]),
    "hyperspectral3d": (Hyperspectral3d, (2, 1, 13, 8, 8), ["c1", "c2", "fc"]),
    "called_twice": (CalledTwice, (2, 4, 6, 6), ["shared", "out"]),
    "tied": (Tied, (3, 6), ["a", "c"]),
    "functional": (Functional, (2, 3, 8, 8), ["kernel", "proj"]),
    "tiny_vit": (TinyViT, (2, 3, 16, 16), ["patch", "attn.in_proj_weight", "attn.out_proj", "mlp.0", "mlp.2", "head"]),
    "untraceable_block": (WithUntraceableBlock, (2, 3, 8, 8), ["stem", "block.conv", "head"]),
}


def build(name: str, seed: int = 0, zoo: dict | None = None):
    """``(model, example input, expected layer names)`` of ``name`` in ``zoo`` (default :data:`ZOO`)."""
    factory, shape, names = (ZOO if zoo is None else zoo)[name]
    torch.manual_seed(seed)
    model = factory().eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
    return model, x, names


def labelled_batches(name: str = "tiny_vit", batch: int = 16, n: int = 80):
    """``(model, [(x, y), ...])``: ``n`` random inputs of zoo model ``name`` labelled by the model
    itself, every 9th label wrong (so hardest-first has an order to find), in batches of ``batch``."""
    model, _, _ = build(name)
    x = torch.randn(n, *ZOO[name][1][1:], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
        y[::9] = (y[::9] + 1) % model(x[:1]).shape[1]
    return model, [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


# ----------------------------------------------------------------------------- computed weights
# Weights computed from parameters at run time (issue 18): name -> (factory, input shape,
# expected layer names). Factories build a fresh, independently initialised-equal model.

def _conv_linear() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 10))


def weight_norm_new() -> nn.Module:
    from torch.nn.utils.parametrizations import weight_norm

    m = _conv_linear()
    weight_norm(m[0])
    weight_norm(m[3])
    return m


def spectral_norm_new() -> nn.Module:
    from torch.nn.utils.parametrizations import spectral_norm

    m = _conv_linear()
    spectral_norm(m[0])
    spectral_norm(m[3])
    return m


def weight_norm_legacy() -> nn.Module:
    import warnings

    m = _conv_linear()
    with warnings.catch_warnings():  # deprecated in favour of parametrizations.weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        nn.utils.weight_norm(m[0])
        nn.utils.weight_norm(m[3], dim=None)
    return m


def weight_norm_legacy_after_forward() -> nn.Module:
    m = weight_norm_legacy()
    m(torch.randn(1, 3, 8, 8))  # the pre-hook has recomputed ``weight`` with autograd history
    return m


def spectral_norm_legacy() -> nn.Module:
    m = _conv_linear()
    nn.utils.spectral_norm(m[0])
    return m


class _Symmetric(nn.Module):
    def forward(self, w):
        return (w + w.transpose(0, 1)) / 2


def custom_parametrization() -> nn.Module:
    from torch.nn.utils import parametrize

    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4))
    parametrize.register_parametrization(m[1], "weight", _Symmetric())
    return m


class StdConv2d(nn.Conv2d):
    """Weight standardisation in ``forward`` (the BiT / NF-Net pattern), written like timm's."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                         momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ScaledStdConv2d(nn.Conv2d):
    """Standardisation times a learnt per-channel gain (NF-Net)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def forward(self, x):
        w = self.weight
        w = self.gain * (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class StdConvNet(nn.Module):
    """Only weight-standardised convs, and a head."""

    def __init__(self):
        super().__init__()
        self.stem = StdConv2d(3, 8, 3, padding=1, bias=False)
        self.conv = ScaledStdConv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.conv(F.relu(self.stem(x))))
        return self.head(x.mean((2, 3)))


class GainNormLinear(nn.Module):
    """``g * v / ||v||`` computed in ``forward`` and fed to ``F.linear`` (weight norm by hand)."""

    def __init__(self):
        super().__init__()
        self.g = nn.Parameter(torch.rand(6, 1) + 0.5)
        self.v = nn.Parameter(torch.randn(6, 48))
        self.b = nn.Parameter(torch.zeros(6))

    def forward(self, x):
        return F.linear(x.flatten(1), self.g * self.v / self.v.norm(dim=1, keepdim=True), self.b)


COMPUTED = {
    "weight_norm": (weight_norm_new, (2, 3, 8, 8), ["0", "3"]),
    "spectral_norm": (spectral_norm_new, (2, 3, 8, 8), ["0", "3"]),
    "weight_norm_legacy": (weight_norm_legacy, (2, 3, 8, 8), ["0", "3"]),
    "weight_norm_legacy_after_forward": (weight_norm_legacy_after_forward, (2, 3, 8, 8), ["0", "3"]),
    "spectral_norm_legacy": (spectral_norm_legacy, (2, 3, 8, 8), ["0", "3"]),
    "custom_parametrization": (custom_parametrization, (2, 3, 2, 2), ["1", "3"]),
    "std_conv": (StdConvNet, (2, 3, 8, 8), ["stem.weight", "conv.weight", "head"]),
    "gain_norm_linear": (GainNormLinear, (2, 3, 4, 4), ["v"]),
}


def build_computed(name: str, seed: int = 0):
    return build(name, seed, COMPUTED)
