"""Shared by the timm tests: build a timm model offline and count its weights by module type."""

from __future__ import annotations

import math

import torch
from torch import nn

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
            nn.Linear, nn.Bilinear)
MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def build_timm(name: str, in_chans: int = 13, num_classes: int = 10, img_size: int | None = None,
               seed: int = 0) -> nn.Module:
    """``timm.create_model(name, pretrained=False, ...)`` in eval mode, with no all-zero weight.

    timm zero-initialises some heads and residual branches; a zero weight makes
    the output constant and any fidelity check empty, so they get small noise.
    """
    import timm

    torch.manual_seed(seed)
    kwargs = {} if img_size is None else {"img_size": img_size}
    model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.02)
    return model.eval()


def typed_weight_elements(model: nn.Module) -> int:
    """Conv/linear/attention weight elements of a float model, counted by module type (tied once)."""
    seen, total = set(), 0
    for module in model.modules():
        names = ["weight"] if isinstance(module, WEIGHTED) else \
            list(MHA_WEIGHTS) if isinstance(module, nn.MultiheadAttention) else []
        for attr in names:
            value = module._parameters.get(attr)
            if value is not None and id(value) not in seen:
                seen.add(id(value))
                total += math.prod(value.shape)
    return total


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def snapshot(model: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        out = model(x)
    classes = {cls: {k: v for k, v in vars(cls).items() if k != "__slotnames__"}
               for cls in {type(m) for m in model.modules()}}
    return out, {k: v.clone() for k, v in model.state_dict().items()}, classes


def assert_unchanged(model: nn.Module, x: torch.Tensor, before) -> None:
    out, state, classes = before
    after_out, after_state, after_classes = snapshot(model, x)
    assert after_classes == classes
    assert list(after_state) == list(state) and all(torch.equal(after_state[k], v) for k, v in state.items())
    assert torch.equal(after_out, out)
