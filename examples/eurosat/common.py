"""Shared helpers for the EuroSAT examples and benchmarks.

Usage from the repository root::

    from examples.eurosat.common import load_trained
    model, meta = load_trained("resnet18", seed=0)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from fxquant.data.eurosat import cache_dir

__all__ = ["NUM_CLASSES", "build_model", "checkpoint_path", "load_trained"]

NUM_CLASSES = 10


def build_model(name: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    """Randomly initialised torchvision architecture ``name`` with ``num_classes`` outputs."""
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(f"unknown torchvision classification model {name!r}; "
                         f"choose one of: {', '.join(sorted(available))}")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def checkpoint_path(name: str, seed: int = 0) -> Path:
    """Default checkpoint location: ``cache_dir()/checkpoints/eurosat_<name>_seed<seed>.pt``."""
    return cache_dir() / "checkpoints" / f"eurosat_{name}_seed{seed}.pt"


def load_trained(name: str, seed: int = 0, path: str | os.PathLike | None = None
                 ) -> tuple[nn.Module, dict]:
    """Load a checkpoint written by ``examples/eurosat/train.py``.

    Returns ``(model.eval(), meta)`` where ``meta`` is the checkpoint dict without
    its ``state_dict`` (test accuracy, hyper-parameters, split seed, ...).
    """
    ckpt_file = Path(path) if path is not None else checkpoint_path(name, seed)
    if not ckpt_file.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {ckpt_file}; train one with "
            f"`python examples/eurosat/train.py --model {name} --seed {seed}`")
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    if ckpt.get("model", name) != name:
        raise ValueError(f"checkpoint {ckpt_file} holds model {ckpt['model']!r}, not {name!r}")
    model = build_model(name, ckpt.get("num_classes", NUM_CLASSES))
    model.load_state_dict(ckpt["state_dict"])
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model.eval(), meta
