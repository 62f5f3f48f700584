"""QuantLinear / QuantConv{1,2,3}d: storage, fidelity to the float op, state_dict round trips."""

import copy

import pytest
import torch
from hypothesis import given
from torch import nn

import fxquant
from fxquant import QuantConfig, QuantConv1d, QuantConv2d, QuantConv3d, QuantLinear, fake_quantize
from fxquant.core.packing import _unpack_columns
from tests.strategies import bit_widths, conv_weights, granularities

FLOAT_AND_QUANT = [
    (lambda: nn.Linear(20, 7), QuantLinear, (5, 20)),
    (lambda: nn.Conv1d(13, 6, 5, padding=2), QuantConv1d, (2, 13, 30)),
    (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), QuantConv2d, (2, 4, 11, 11)),
    (lambda: nn.Conv3d(3, 4, (3, 3, 3), padding=1), QuantConv3d, (1, 3, 5, 6, 7)),
]


def _reference(float_module, bits, config=None):
    """The float module computing with the fake-quantized weight: what the quantized module must match."""
    ref = copy.deepcopy(float_module)
    with torch.no_grad():
        ref.weight.copy_(fake_quantize(float_module.weight, config or QuantConfig(bits=bits)))
    return ref


_CONVS = {3: (nn.Conv1d, QuantConv1d), 4: (nn.Conv2d, QuantConv2d), 5: (nn.Conv3d, QuantConv3d)}


@given(conv_weights(), bit_widths, granularities)
def test_any_conv_weight_matches_the_float_op_with_its_fake_quantized_weight(w, bits, gran):
    """Conv1d/2d/3d of drawn shapes (1x1 kernels, single channels, zero or constant channels)."""
    fcls, qcls = _CONVS[w.dim()]
    fm = fcls(w.shape[1], w.shape[0], tuple(w.shape[2:]), padding=1)
    with torch.no_grad():
        fm.weight.copy_(w)
    cfg = QuantConfig(bits=bits, granularity=gran)
    q = qcls.from_float(fm, bits, cfg)
    assert q.packed_nbytes() == (w.numel() * bits + 7) // 8
    x = torch.randn(2, w.shape[1], *([4] * (w.dim() - 2)), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(q(x), _reference(fm, bits, cfg)(x), rtol=1e-5, atol=1e-5)


def test_4bit_64x64x3x3_conv_stores_18432_bytes():
    q = QuantConv2d.from_float(nn.Conv2d(64, 64, 3, padding=1), bits=4)
    assert q.packed_weight.dtype == torch.uint8
    assert q.packed_weight.numel() == 64 * 64 * 9 * 4 // 8 == 18432
    assert q.weight_scale.shape == (64,) and q.weight_zero_point.shape == (64,)


@pytest.mark.parametrize("make, qcls, shape", FLOAT_AND_QUANT)
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_matches_float_op_with_fake_quantized_weight(make, qcls, shape, bits):
    fm = make()
    q = qcls.from_float(fm, bits)
    x = torch.randn(shape)
    assert q.bits == bits and f"bits={bits}" in repr(q)
    torch.testing.assert_close(q(x), _reference(fm, bits)(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make, qcls, shape", FLOAT_AND_QUANT)
def test_state_dict_holds_packed_bytes_and_round_trips(make, qcls, shape):
    fm = make()
    q = qcls.from_float(fm, 3)
    sd = q.state_dict()
    assert set(sd) == {"packed_weight", "weight_scale", "weight_zero_point", "bias"}
    assert sd["packed_weight"].dtype == torch.uint8
    assert not any(v.is_floating_point() and v.numel() == fm.weight.numel() for v in sd.values())
    # A fresh module built from the hyper-parameters alone, then loaded.
    if isinstance(fm, nn.Linear):
        fresh = qcls(fm.in_features, fm.out_features, bias=fm.bias is not None, bits=3)
    else:
        fresh = qcls(fm.in_channels, fm.out_channels, fm.kernel_size, stride=fm.stride, padding=fm.padding,
                     dilation=fm.dilation, groups=fm.groups, bias=fm.bias is not None, bits=3)
    fresh.load_state_dict(sd)
    x = torch.randn(shape)
    assert torch.equal(fresh(x), q(x))


def test_fresh_module_from_constructor_loads_state_dict():
    fm = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2, bias=False)
    q = QuantConv2d.from_float(fm, 5)
    fresh = QuantConv2d(8, 16, 3, stride=2, padding=1, groups=2, bias=False, bits=5)
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(2, 8, 9, 9)
    assert torch.equal(fresh(x), q(x))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(stride=2, padding=1),
        dict(padding="same", dilation=2),
        dict(padding="valid"),
        dict(padding=2, dilation=2, groups=2),
        dict(padding=1, groups=8),  # depthwise
        dict(padding=1, padding_mode="reflect"),
        dict(padding=(1, 2), padding_mode="replicate"),
        dict(padding=1, padding_mode="circular", stride=(1, 2)),
        dict(padding="same", padding_mode="reflect", kernel_size=4),
        dict(padding=0, bias=False),
    ],
)
def test_every_conv_hyper_parameter_is_honoured(kwargs):
    kwargs = dict(kwargs)
    k = kwargs.pop("kernel_size", 3)
    fm = nn.Conv2d(8, 8, k, **kwargs)
    q = QuantConv2d.from_float(fm, 6)
    x = torch.randn(2, 8, 10, 9)
    torch.testing.assert_close(q(x), _reference(fm, 6)(x), rtol=1e-5, atol=1e-5)


def test_all_zero_weights():
    for fm in (nn.Linear(5, 3), nn.Conv2d(3, 4, 3)):
        nn.init.zeros_(fm.weight)
        for bits in range(1, 9):
            q = fxquant.nn.modules.quant_module_for(fm).from_float(fm, bits)
            assert torch.isfinite(q.weight_scale).all() and (q.weight_scale > 0).all()
            assert q.weight.abs().max() < 1e-20


def test_weight_cache_switch_gives_identical_outputs_and_invalidates_on_load():
    fm = nn.Conv2d(4, 6, 3, padding=1)
    q = QuantConv2d.from_float(fm, 4)
    x = torch.randn(1, 4, 8, 8)
    packed_only = q(x)
    fxquant.set_weight_cache(q, True)
    assert torch.equal(q(x), packed_only) and q._weight_cache is not None
    assert "_weight_cache" not in q.state_dict()
    other = QuantConv2d.from_float(nn.Conv2d(4, 6, 3, padding=1), 4)
    q.load_state_dict(other.state_dict())
    assert q._weight_cache is None
    assert torch.equal(q(x), other(x))


def test_subclass_of_linear_is_accepted():
    mha_proj = nn.modules.linear.NonDynamicallyQuantizableLinear(6, 6)
    q = fxquant.nn.modules.quant_module_for(mha_proj).from_float(mha_proj, 8)
    assert isinstance(q, QuantLinear)


def test_nan_weight_names_the_layer():
    fm = nn.Linear(4, 4)
    with torch.no_grad():
        fm.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="classifier.1"):
        QuantLinear.from_float(fm, 4, name="classifier.1")


def test_wrong_float_type_and_bad_bits():
    with pytest.raises(ValueError, match="nn.Linear"):
        QuantLinear.from_float(nn.Conv2d(1, 1, 1), 4)
    with pytest.raises(ValueError, match="bits"):
        QuantConv2d.from_float(nn.Conv2d(1, 1, 1), 0)


def test_per_tensor_config_is_respected():
    fm = nn.Linear(8, 4)
    q = QuantLinear.from_float(fm, 4, QuantConfig(bits=8, granularity="per_tensor"))
    assert q.bits == 4 and q.weight_scale.shape == (1,)
    x = torch.randn(3, 8)
    ref = _reference(fm, 4, QuantConfig(bits=4, granularity="per_tensor"))
    torch.testing.assert_close(q(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", range(1, 9))
def test_packed_forward_weight_is_bit_identical_to_the_reference_path(bits):
    # The forward path (fast unpack, no copy at 8 bits) against column unpack + dequantize.
    q = QuantConv2d.from_float(nn.Conv2d(24, 40, 3), bits)
    numel = 40 * 24 * 3 * 3
    codes = q.packed_weight.clone() if bits == 8 else _unpack_columns(q.packed_weight, bits, numel)
    codes = codes.view(q.weight_shape)
    assert torch.equal(q.weight_codes(), codes)
    assert torch.equal(q.dequantized_weight(), fxquant.dequantize(codes, q.weight_scale, q.weight_zero_point))
