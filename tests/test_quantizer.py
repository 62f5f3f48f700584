"""Property tests of the uniform weight quantizer."""

import numpy as np
import pytest
import torch
from hypothesis import given

from fxquant import QuantConfig, dequantize, quantize_weight
from fxquant.core.quantizer import compute_qparams, quantize
from tests.strategies import any_weights, bit_widths, clippings, granularities, schemes

REL_TOL = 1e-5  # float32 rounding in w / scale


def _config(bits, granularity="per_channel", scheme="affine", clipping="minmax"):
    """The range-preserving grid under ``minmax`` (at 1 bit too: ``binary_scale="max"``), else MSE clipping."""
    return QuantConfig(bits=bits, granularity=granularity, scheme=scheme, clipping=clipping,
                       binary_scale="max" if clipping == "minmax" else "mean")


def _grid_ends(qw):
    levels = (1 << qw.bits) - 1
    lo = (0 - qw.zero_point) * qw.scale
    hi = (levels - qw.zero_point) * qw.scale
    return lo, hi


def _rows(t, per_channel):
    return t.reshape(t.shape[0], -1) if per_channel else t.reshape(1, -1)


@given(any_weights(), bit_widths, granularities, schemes, clippings)
def test_codes_in_range_and_scales_finite_positive(w, bits, gran, scheme, clip):
    qw = quantize_weight(w, _config(bits, gran, scheme, clip))
    assert qw.codes.dtype == torch.uint8 and qw.codes.shape == w.shape
    assert int(qw.codes.max()) <= (1 << bits) - 1
    assert torch.isfinite(qw.scale).all() and (qw.scale > 0).all()
    assert torch.isfinite(qw.zero_point).all()
    assert torch.isfinite(qw.dequantize()).all()


@given(any_weights(), bit_widths, granularities, schemes, clippings)
def test_error_within_half_step_inside_clipping_range(w, bits, gran, scheme, clip):
    cfg = _config(bits, gran, scheme, clip)
    qw = quantize_weight(w, cfg)
    lo, hi = (t.reshape(-1, 1) for t in _grid_ends(qw))
    rows, deq = _rows(w, cfg.per_channel), _rows(qw.dequantize(), cfg.per_channel)
    half = qw.scale.reshape(-1, 1) / 2
    inside = (rows >= lo) & (rows <= hi)
    err = (rows - deq).abs()
    assert (err[inside.expand_as(err)] <= (half * (1 + REL_TOL) + 1e-12).expand_as(err)[inside]).all()


@given(any_weights(), bit_widths, granularities, schemes)
def test_minmax_error_within_half_step_everywhere(w, bits, gran, scheme):
    """Under min/max scaling nothing is clipped: every weight is within half a step."""
    cfg = _config(bits, gran, scheme, "minmax")
    qw = quantize_weight(w, cfg)
    err = _rows((w - qw.dequantize()).abs(), cfg.per_channel)
    assert (err <= qw.scale.reshape(-1, 1) / 2 * (1 + REL_TOL) + 1e-12).all()


@given(any_weights(), bit_widths, granularities, schemes, clippings)
def test_requantizing_dequantized_weight_is_idempotent(w, bits, gran, scheme, clip):
    qw = quantize_weight(w, _config(bits, gran, scheme, clip))
    again = quantize(qw.dequantize(), qw.scale, qw.zero_point, bits)
    assert torch.equal(again, qw.codes)


@given(any_weights(), granularities, schemes)
def test_more_bits_never_increase_max_error_under_minmax(w, gran, scheme):
    """Per channel, the max error at b+1 bits is at most the max error bound at b bits,
    and that bound (half a grid step, which min/max scaling guarantees) shrinks with b.
    (The realised error of a particular channel may not be monotone: a weight lying
    exactly on the 2-bit grid can fall between 3-bit levels.)"""
    per_channel = gran == "per_channel"
    prev_bound = None
    for bits in range(1, 9):
        qw = quantize_weight(w, _config(bits, gran, scheme, "minmax"))
        max_err = _rows((w - qw.dequantize()).abs(), per_channel).amax(dim=1)
        bound = qw.scale / 2
        assert (max_err <= bound * (1 + REL_TOL) + 1e-12).all()
        if prev_bound is not None:
            nonzero = prev_bound > 1e-20
            assert (bound[nonzero] < prev_bound[nonzero]).all()
            assert (max_err[nonzero] <= prev_bound[nonzero] * (1 + REL_TOL)).all()
        prev_bound = bound


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("scheme", ["affine", "symmetric"])
def test_all_levels_are_used(bits, scheme):
    top = 2.0 if scheme == "affine" else 1.0  # a symmetric grid spans [-max|w|, max|w|]
    w = torch.from_numpy(np.linspace(-1.0, top, 2000, dtype=np.float32)).view(1, -1)
    codes = quantize_weight(w, _config(bits, scheme=scheme)).codes
    assert torch.unique(codes).numel() == 1 << bits


@pytest.mark.parametrize("bits", range(2, 9))
def test_affine_represents_zero_exactly(bits):
    w = torch.tensor([[-0.3, 0.0, 0.7, 0.11], [0.0, 0.2, 0.5, 0.0]])
    deq = quantize_weight(w, _config(bits)).dequantize()
    assert (deq[w == 0] == 0).all()


@pytest.mark.parametrize("clipping", ["minmax", "mse"])
def test_one_bit_is_a_signed_binary_code_per_channel(clipping):
    w = torch.tensor([[-0.5, 0.1, 0.4, -0.2], [1.0, -3.0, 2.0, 0.5]])
    deq = quantize_weight(w, _config(1, clipping=clipping)).dequantize()
    for row, src in zip(deq, w):
        values = torch.unique(row)
        assert values.numel() == 2 and torch.isclose(values[0], -values[1])
        assert torch.equal(torch.sign(row), torch.sign(src))


@pytest.mark.parametrize("clipping,binary_scale,amps", [
    # rows [-0.5, 0.1, 0.4, -0.2] and [1.0, -3.0, 2.0, 0.5]: mean|w| = 0.3 and 1.625, max|w| = 0.5 and 3.0
    ("minmax", "mean", (0.3, 1.625)), ("mse", "mean", (0.3, 1.625)), ("mse", "max", (0.3, 1.625)),
    ("minmax", "max", (0.5, 3.0))])
def test_one_bit_scale_is_mean_abs_unless_max_asked_for(clipping, binary_scale, amps):
    w = torch.tensor([[-0.5, 0.1, 0.4, -0.2], [1.0, -3.0, 2.0, 0.5]])
    qw = quantize_weight(w, QuantConfig(bits=1, clipping=clipping, binary_scale=binary_scale))
    expected = torch.tensor(amps).view(-1, 1) * torch.sign(w)
    assert torch.allclose(qw.dequantize(), expected)
    assert qw.codes.tolist() == [[0, 1, 1, 0], [1, 0, 1, 1]]


def test_mean_abs_is_the_least_squares_binary_code():
    w = torch.randn(8, 200)
    errs = {s: (quantize_weight(w, QuantConfig(bits=1, binary_scale=s)).dequantize() - w).pow(2).sum(1)
            for s in ("mean", "max")}
    assert (errs["mean"] < errs["max"]).all()
    for f in (0.9, 1.1):  # a perturbed amplitude is worse: mean|w| is the optimum of sum (w - a sign w)^2
        a = w.abs().mean(dim=1, keepdim=True) * f
        assert ((a * torch.sign(w) - w).pow(2).sum(1) > errs["mean"]).all()


def test_binary_scale_is_validated():
    with pytest.raises(ValueError, match="QuantConfig.binary_scale must be one of"):
        QuantConfig(binary_scale="median")


@given(bit_widths, granularities, schemes, clippings)
def test_all_zero_and_constant_weights_are_finite(bits, gran, scheme, clip):
    cfg = _config(bits, gran, scheme, clip)
    for w in (torch.zeros(3, 5), torch.full((3, 5), 0.25), torch.full((3, 5), -2.0)):
        scale, zp = compute_qparams(w, cfg)
        assert torch.isfinite(scale).all() and (scale > 0).all()
        deq = quantize_weight(w, cfg).dequantize()
        assert torch.isfinite(deq).all()
    assert quantize_weight(torch.zeros(3, 5), cfg).dequantize().abs().max() < 1e-20


def test_mse_clipping_never_worse_than_minmax_in_weight_error():
    w = torch.randn(16, 300) * torch.linspace(0.1, 2.0, 16).view(-1, 1)
    w[:, 0] = 8.0  # an outlier per channel: the case clipping exists for
    for bits in range(2, 9):
        errs = {}
        for clip in ("minmax", "mse"):
            deq = quantize_weight(w, _config(bits, clipping=clip)).dequantize()
            errs[clip] = (deq - w).pow(2).sum(dim=1)
        assert (errs["mse"] <= errs["minmax"] * (1 + 1e-6)).all()
        if bits <= 4:  # with an 8x outlier per channel, clipping must pay off at low widths
            assert errs["mse"].sum() < 0.9 * errs["minmax"].sum()


def test_per_tensor_has_one_scale():
    w = torch.randn(4, 9, generator=torch.Generator().manual_seed(0))
    qw = quantize_weight(w, _config(4, "per_tensor"))
    assert qw.scale.shape == (1,) and qw.zero_point.shape == (1,)
    # One grid over the whole tensor: [min(w, 0), max(w, 0)] in 15 steps, every weight within half a step.
    step = (w.max().clamp_min(0) - w.min().clamp_max(0)) / 15
    assert torch.allclose(qw.scale, step.view(1), rtol=1e-5)
    by_hand = (qw.codes.float() - qw.zero_point.float()) * qw.scale.float()
    assert torch.allclose(dequantize(qw.codes, qw.scale, qw.zero_point), by_hand)
    assert (by_hand - w).abs().max() <= step / 2 + 1e-6


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_raise_naming_the_layer(bad):
    w = torch.randn(3, 4)
    w[1, 2] = bad
    with pytest.raises(ValueError, match="layer4.0.conv1"):
        quantize_weight(w, QuantConfig(bits=4), name="layer4.0.conv1")


@pytest.mark.parametrize(
    "kwargs, field",
    [({"bits": 0}, "bits"), ({"bits": 9}, "bits"), ({"bits": 3.0}, "bits"),
     ({"granularity": "per_row"}, "granularity"), ({"scheme": "log"}, "scheme"),
     ({"clipping": "kl"}, "clipping"), ({"mse_grid": 0}, "mse_grid"),
     ({"mse_min_ratio": 0.0}, "mse_min_ratio")],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        QuantConfig(**kwargs)
