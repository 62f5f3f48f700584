"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

bit_widths = st.integers(min_value=1, max_value=8)
granularities = st.sampled_from(["per_channel", "per_tensor"])
schemes = st.sampled_from(["affine", "symmetric"])
clippings = st.sampled_from(["minmax", "mse"])

# Magnitudes typical of trained weights, plus exact zeros and repeated values
# (constant channels) which stress the scale computation.
_weight_values = st.one_of(
    st.floats(min_value=-4.0, max_value=4.0, allow_nan=False, width=32),
    st.just(0.0),
    st.floats(min_value=-0.0009765625, max_value=0.0009765625, allow_nan=False, width=32),
)


@st.composite
def codes_and_bits(draw, max_numel: int = 300):
    """(codes uint8 tensor of any length 0..max_numel, bits)."""
    bits = draw(bit_widths)
    n = draw(st.integers(min_value=0, max_value=max_numel))
    values = draw(hnp.arrays(np.uint8, n, elements=st.integers(0, (1 << bits) - 1)))
    return torch.from_numpy(values.copy()), bits


def _with_special_channels(draw, w: torch.Tensor) -> torch.Tensor:
    special = draw(st.sampled_from(["none", "zero", "constant"]))
    if special == "zero":
        w[0] = 0.0
    elif special == "constant":
        w[-1] = draw(st.floats(min_value=-2.0, max_value=2.0, allow_nan=False, width=32))
    return w


@st.composite
def weights(draw, max_channels: int = 6, max_per_channel: int = 40):
    """A float32 linear weight [C, K]; some draws have all-zero or constant channels."""
    channels = draw(st.integers(min_value=1, max_value=max_channels))
    per = draw(st.integers(min_value=1, max_value=max_per_channel))
    arr = draw(hnp.arrays(np.float32, (channels, per), elements=_weight_values))
    return _with_special_channels(draw, torch.from_numpy(arr.copy()))


@st.composite
def conv_weights(draw, dims: tuple[int, ...] = (3, 4, 5), max_channels: int = 5, max_kernel: int = 3):
    """A float32 conv weight ``[C_out, C_in, *kernel]`` of 3, 4 or 5 dimensions (Conv1d/2d/3d);
    some draws have all-zero or constant output channels."""
    ndim = draw(st.sampled_from(dims))
    shape = (draw(st.integers(1, max_channels)), draw(st.integers(1, max_channels)),
             *(draw(st.integers(1, max_kernel)) for _ in range(ndim - 2)))
    arr = draw(hnp.arrays(np.float32, shape, elements=_weight_values))
    return _with_special_channels(draw, torch.from_numpy(arr.copy()))


def any_weights():
    """Linear-shaped (2-D) or conv-shaped (3-D, 4-D, 5-D) weights."""
    return st.one_of(weights(), conv_weights())


@st.composite
def knapsack_instances(draw, max_items: int = 5, max_options: int = 4):
    """(costs, sizes, budget) of a small multiple-choice knapsack: per item, options with a
    non-negative cost and an integer size; the budget ranges over and beyond the feasible sizes."""
    items = draw(st.integers(min_value=1, max_value=max_items))
    costs, sizes = [], []
    for _ in range(items):
        k = draw(st.integers(min_value=1, max_value=max_options))
        costs.append(draw(st.lists(st.floats(0.0, 10.0, allow_nan=False, width=32), min_size=k, max_size=k)))
        sizes.append(draw(st.lists(st.integers(0, 40), min_size=k, max_size=k)))
    lo = sum(min(s) for s in sizes)
    hi = sum(max(s) for s in sizes)
    budget = draw(st.integers(min_value=max(0, lo - 5), max_value=hi + 5))
    return costs, sizes, budget
