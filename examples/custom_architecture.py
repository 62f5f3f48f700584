"""Quantize and compress a user-defined architecture end to end.

    python examples/custom_architecture.py

A hyperspectral-style classifier (13 bands, like Sentinel-2) that torchvision
does not ship: a Conv3d over the spectral cube, a depthwise/dilated 2-D stage,
attention over pixels, and a bare Parameter used through F.linear. It trains
for a few seconds on synthetic data, then is quantized at fixed widths and
compressed with the adaptive bit-width search.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import fxquant

BANDS, SIZE, CLASSES = 13, 8, 4


class SpectralNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.spectral = nn.Conv3d(1, 4, (5, 3, 3), padding=(2, 1, 1))
        self.spatial = nn.Conv2d(4 * BANDS, 4 * BANDS, 3, padding=2, dilation=2, groups=4 * BANDS)
        self.mix = nn.Conv2d(4 * BANDS, 32, 1, bias=False)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.classifier = nn.Parameter(torch.randn(CLASSES, 32) * 0.1)

    def forward(self, x):  # x: [batch, 1, bands, H, W]
        x = F.relu(self.spectral(x)).flatten(1, 2)  # [batch, 4*bands, H, W]
        x = F.relu(self.mix(F.relu(self.spatial(x))))
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.attn(tokens, tokens, tokens, need_weights=False)[0]
        return F.linear(tokens.mean(dim=1), self.classifier)


def synthetic(n: int, gen: torch.Generator):
    """Each class has its own spectral signature; pixels are noisy copies of it."""
    signatures = torch.randn(CLASSES, BANDS, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    x = signatures[y].view(n, 1, BANDS, 1, 1) + 4.0 * torch.randn(n, 1, BANDS, SIZE, SIZE, generator=gen)
    return x, y


def main() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = SpectralNet()
    x_train, y_train = synthetic(2048, gen)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        idx = torch.randint(0, len(y_train), (64,), generator=gen)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x_cal, y_cal = synthetic(512, gen)
    x_test, y_test = synthetic(1024, gen)
    calib = [(x_cal[i:i + 128], y_cal[i:i + 128]) for i in range(0, 512, 128)]
    test = fxquant.AccuracyOracle([(x_test, y_test)])

    print("layers:", fxquant.quantizable_layers(model))
    for bits in (8, 4, 2):
        print(f"fixed {bits}-bit: test accuracy {test(fxquant.quantize(model, bits)):.2f}%")
    qmodel = fxquant.compress(model, calib, verbose=False)
    report = fxquant.report(qmodel)
    print(report.to_text())
    print(f"float test accuracy {test(model):.2f}% -> compressed {test(qmodel):.2f}% "
          f"at {report.average_bits:.2f} average bits")


if __name__ == "__main__":
    main()
