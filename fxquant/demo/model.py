"""The demo's model, :class:`DemoCNN`, and its short training loop.

``fxquant.demo:DemoCNN`` is the architecture spec recorded in files the demo writes
(``fxquant eval`` rebuilds the model from it), so the class stays importable under
that name (:mod:`fxquant.demo` re-exports it).
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from fxquant.data.synthetic import BANDS

__all__ = ["DemoCNN", "train"]

log = logging.getLogger("fxquant.demo")


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


def train(model: nn.Module, loader, epochs: int, lr: float = 5e-3) -> None:
    """Train ``model`` in place with AdamW and a one-cycle schedule; logs one line per epoch; leaves it in eval mode."""
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
