"""Accuracy oracles: what the bit-width search maximises.

An oracle is any ``oracle(model) -> float`` where higher is better (accuracy,
F1, mIoU, ...). :class:`AccuracyOracle` is the default: top-1 accuracy in
percentage points over a calibration set. Besides being callable it exposes the
per-batch pieces (``batches``, :meth:`correct`) so that the search can run only
the part of the graph a change affects and stop an evaluation early; user
oracles are always called on the whole model.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from fxquant.core.calibration import check_inputs

__all__ = ["AccuracyOracle", "check_oracle_value"]


def check_oracle_value(value, who: str = "oracle") -> float:
    """The oracle's result as a float; NaN, inf or non-numbers raise ``ValueError``."""
    try:
        out = float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{who} must return a number, got {type(value).__name__}") from e
    if not math.isfinite(out):
        raise ValueError(f"{who} returned {out}; it must return a finite number (higher is better)")
    return out


def _as_batch(item, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        got = f"a {type(item).__name__} of length {len(item)}" if isinstance(item, (tuple, list)) \
            else f"a {type(item).__name__}"
        raise ValueError(f"calib_loader batch {index} must be an (inputs, targets) pair, got {got}")
    x, y = item
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"calib_loader batch {index}: inputs and targets must be tensors, "
                         f"got ({type(x).__name__}, {type(y).__name__})")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.dim() != 1:
        raise ValueError(f"calib_loader batch {index}: targets must be a 1-D integer class-index "
                         f"tensor, got dtype {y.dtype} and shape {tuple(y.shape)}")
    if x.dim() == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"calib_loader batch {index}: {tuple(x.shape)} inputs but {y.shape[0]} targets")
    return x, y.long()  # class indices of any integer dtype


class AccuracyOracle:
    """Top-1 accuracy (percentage points) of a classifier over ``calib_loader``.

    ``calib_loader`` is any iterable of ``(inputs, targets)`` batches (a
    ``DataLoader``, a list, ...). It is read once and kept in memory, so every
    evaluation sees exactly the same data in the same order.
    """

    def __init__(self, calib_loader: Iterable):
        if calib_loader is None:
            raise ValueError("calib_loader is required for the default accuracy oracle")
        if isinstance(calib_loader, torch.Tensor):
            raise TypeError("calib_loader is a single tensor; pass an iterable of (inputs, targets) batches, "
                            "e.g. [(inputs, targets)] or a DataLoader")
        try:
            items = iter(calib_loader)
        except TypeError as e:
            raise ValueError(f"calib_loader must be an iterable of (inputs, targets) batches, "
                             f"got {type(calib_loader).__name__}") from e
        self.batches = [_as_batch(item, i) for i, item in enumerate(items)]
        self.batches = [(x, y) for x, y in self.batches if y.numel()]
        if not self.batches:
            raise ValueError("calib_loader is empty: the accuracy oracle needs at least one sample")
        check_inputs([x for x, _ in self.batches], "calib_loader")
        self.total = sum(int(y.numel()) for _, y in self.batches)
        self._checked_classes: int | None = None

    def __len__(self) -> int:
        return self.total

    def correct(self, logits, targets: torch.Tensor, batch_index: int = 0) -> int:
        """Number of correct top-1 predictions in one batch (validates the model's output)."""
        if isinstance(logits, (tuple, list)) and logits and isinstance(logits[0], torch.Tensor):
            logits = logits[0]  # e.g. (logits, aux) outputs
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"the model must return [batch, classes] logits for the accuracy oracle; "
                             f"got {shape} for batch {batch_index} of {targets.shape[0]} samples")
        classes = logits.shape[1]
        if self._checked_classes != classes:
            bad = [(i, int(y.min()), int(y.max())) for i, (_, y) in enumerate(self.batches)
                   if int(y.min()) < 0 or int(y.max()) >= classes]
            if bad:
                i, lo, hi = bad[0]
                raise ValueError(f"calib_loader batch {i} has targets in [{lo}, {hi}] but the model "
                                 f"outputs {classes} classes (valid targets: 0..{classes - 1})")
            self._checked_classes = classes
        return int((logits.argmax(dim=1) == targets).sum())

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> float:
        correct = sum(self.correct(model(x), y, i) for i, (x, y) in enumerate(self.batches))
        return 100.0 * correct / self.total

    def accuracy(self, correct: int) -> float:
        return 100.0 * correct / self.total

    def can_still_reach(self, correct_so_far: int, seen: int, threshold: float) -> bool:
        """Whether accuracy >= ``threshold`` is still possible with ``seen`` samples scored."""
        return 100.0 * (correct_so_far + self.total - seen) / self.total >= threshold
