"""Channels-last activations for the search's forward passes: the same model, computed faster on CPU.

A search runs the model dozens of times over the calibration set, and on CPU most
of that time is convolution and pooling. In NCHW layout oneDNN reorders every
activation into its blocked layout and back around each convolution, and max
pooling runs its slow NCHW kernel; with 4-D weights stored channels-last the
activations stay NHWC from the first convolution on. The values agree with the
NCHW forward to float32 rounding, not bit for bit (the summation order differs);
the search's statistics absorb that (KLs are rounded to 5 significant digits, as
they are against thread-count differences).

A model may depend on its layout: ``x.view(n, -1)`` after a convolution fails on
a channels-last tensor, and code may read strides. So a probe forward on a few
calibration images must succeed and agree with the NCHW output; otherwise the
model stays as it is and the reason is logged. Only 4-D parameters and buffers
in NCHW layout change format, in place (the same ``Parameter`` objects), and
the returned ``undo`` puts exactly those back, so nothing outside the search
sees the difference.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["use_channels_last", "PROBE_IMAGES"]

PROBE_IMAGES = 4  # images of the probe forward: enough to see a layout-dependent failure, cheap


def _four_d(model: nn.Module) -> list[torch.Tensor]:
    seen, out = set(), []
    for t in (*model.parameters(), *model.buffers()):
        if t.dim() == 4 and t.is_contiguous() and id(t) not in seen:  # NCHW ones; tied weights once
            seen.add(id(t))
            out.append(t)
    return out


def _set_format(tensors: list[torch.Tensor], fmt: torch.memory_format) -> None:
    for t in tensors:
        t.data = t.data.contiguous(memory_format=fmt)


def _first_tensor(out) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _nothing() -> None:
    return None


@torch.no_grad()
def use_channels_last(model: nn.Module, probe: torch.Tensor | None) -> tuple[Callable[[], None], str | None]:
    """Store ``model``'s NCHW 4-D weights channels-last if a probe forward allows it; edits in place.

    Returns ``(undo, None)`` when the model was converted (``undo()`` restores
    the converted tensors' NCHW layout), else ``(no-op, why not)`` with the model
    unchanged. ``probe`` is a batch of model inputs; its first
    :data:`PROBE_IMAGES` images are used.
    """
    tensors = _four_d(model)
    if not isinstance(probe, torch.Tensor) or probe.dim() != 4:
        return _nothing, "the model's input is not a batch of images"
    if not tensors:
        return _nothing, "the model has no 4-D weights in NCHW layout"
    if probe.device.type != "cpu":
        return _nothing, "channels-last is only used on CPU"
    x = probe[:PROBE_IMAGES]
    reference = _first_tensor(model(x.clone()))
    _set_format(tensors, torch.channels_last)

    def undo() -> None:
        _set_format(tensors, torch.contiguous_format)

    try:
        got = _first_tensor(model(x.clone()))
    except Exception as e:  # noqa: BLE001 - any failure means: keep NCHW
        undo()
        return _nothing, f"the probe forward failed in channels-last layout ({type(e).__name__}: {e})"
    if reference is None or got is None or got.shape != reference.shape or not torch.allclose(
            got.float(), reference.float(), rtol=1e-3, atol=1e-4 * float(reference.abs().max().clamp_min(1.0))):
        undo()
        return _nothing, "the probe forward in channels-last layout disagrees with NCHW"
    return undo, None
