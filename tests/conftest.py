"""Shared test set-up: one hypothesis profile, deterministic torch, EuroSAT skip helper."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# One profile for the whole suite: derandomised so CI runs are reproducible,
# no per-example deadline (first torch calls are slow to warm up).
settings.register_profile(
    "fxquant",
    max_examples=int(os.environ.get("FXQUANT_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("fxquant")

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
