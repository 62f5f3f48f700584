"""Data-aware quantization: input columns, GPTQ rounding, bias correction, and their API."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import fxquant
from fxquant import passes
from fxquant import QuantConfig
from fxquant.core.calibration import InputStats, calibration_inputs, input_columns
from fxquant.core.gptq import gptq_factor, gptq_quantize
from fxquant.core.quantizer import quantize_weight
from fxquant.passes.calibrate import LayerQuantizer, data_aware_layers, sequential_quantize
from tests import strategies
from tests.models import build

NEAREST = QuantConfig(rounding="nearest", bias_correction=False)
GPTQ_ONLY = QuantConfig(rounding="gptq", bias_correction=False)
BC_ONLY = QuantConfig(rounding="nearest", bias_correction=True)


class SmallCNN(nn.Module):
    """Correlated inputs (a smooth image) through bias-free convs, BatchNorm and a head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.c1(x)))
        x = torch.relu(self.dw(torch.relu(self.c2(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _small_cnn_and_data(n=64):
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
    gen = torch.Generator().manual_seed(1)
    x = torch.nn.functional.avg_pool2d(torch.randn(n, 3, 20, 20, generator=gen), 3, 1, 1) * 3
    return model.eval(), [x[i:i + 16] for i in range(0, n, 16)]


# ----------------------------------------------------------------------------- input columns

_CONVS = [
    (nn.Conv2d(6, 8, 3, padding=1, groups=2, stride=2, dilation=2), (2, 6, 9, 9)),
    (nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"), (2, 4, 7, 7)),
    (nn.Conv2d(3, 5, (3, 2), padding="same", bias=False), (2, 3, 8, 6)),
    (nn.Conv2d(80, 4, 3, padding=1, padding_mode="circular"), (1, 80, 5, 5)),  # circular padding, many channels
    (nn.Conv1d(4, 6, 5, padding=2, stride=2, padding_mode="circular"), (3, 4, 11)),
    (nn.Conv3d(4, 6, (2, 3, 3), padding=(1, 0, 1), groups=2, dilation=(1, 2, 1)), (2, 4, 5, 8, 7)),
    (nn.Linear(7, 3), (2, 5, 7)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("module,shape", _CONVS, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
def test_input_columns_times_weight_rows_is_the_layer_output(module, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    with torch.no_grad():
        y = module(x)
    if module.bias is not None:
        y = y - (module.bias if isinstance(module, nn.Linear) else module.bias.view(1, -1, *[1] * (y.dim() - 2)))
    cols = input_columns(module, x)
    g = cols.shape[0]
    rows = module.weight.detach().reshape(g, module.weight.shape[0] // g, -1)
    out = torch.bmm(rows, cols)
    if isinstance(module, nn.Linear):
        ref = y.reshape(-1, y.shape[-1]).t().unsqueeze(0)
    else:
        b, c = y.shape[:2]
        ref = y.reshape(b, g, c // g, -1).permute(1, 2, 0, 3).reshape(g, c // g, -1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_input_columns_subsampling_keeps_whole_columns_and_covers_positions():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 2, 6, 6)
    full = input_columns(conv, x)  # [1, 18, 2*36]
    sub = input_columns(conv, x, max_positions=8, offset=1)
    assert sub.shape == (1, 18, 16)
    full_cols = {tuple(c.tolist()) for c in full[0].t()}
    assert all(tuple(c.tolist()) in full_cols for c in sub[0].t())
    stats = InputStats(conv, max_positions=8)
    for _ in range(5):
        stats.add(x)
    assert stats.count == 5 * 16 and stats.hessian.shape == (1, 18, 18)


def test_input_stats_errors_name_the_problem():
    with pytest.raises(ValueError, match="BatchNorm2d"):
        InputStats(nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="never reached"):
        InputStats(nn.Linear(2, 2)).mean
    with pytest.raises(ValueError, match="calib_loader yielded no batches"):
        calibration_inputs([], 10)
    with pytest.raises(ValueError, match="batch 0 holds a str"):
        calibration_inputs(["x"], 10)
    got = calibration_inputs([(torch.ones(4, 2), torch.zeros(4)), torch.ones(4, 2)], 6)
    assert [t.shape[0] for t in got] == [4, 2]


# ----------------------------------------------------------------------------- GPTQ


@given(w=strategies.weights(), bits=strategies.bit_widths, gran=strategies.granularities,
       scheme=strategies.schemes, clip=strategies.clippings,
       diag=st.lists(st.floats(0.01, 100.0), min_size=40, max_size=40))
def test_gptq_with_a_diagonal_hessian_is_nearest_rounding(w, bits, gran, scheme, clip, diag):
    # Uncorrelated inputs leave no error to compensate: GPTQ must reduce to rounding.
    cfg = QuantConfig(bits=bits, granularity=gran, scheme=scheme, clipping=clip)
    h = torch.diag(torch.tensor(diag[: w.shape[1]]))
    got = gptq_quantize(w, h, cfg)
    ref = quantize_weight(w, cfg)
    assert torch.equal(got.scale, ref.scale) and torch.equal(got.zero_point, ref.zero_point)
    # Ties at exactly x.5 may round either way after the (no-op) update's float error; anywhere
    # else a different code would be a worse one.
    assert (got.codes.int() - ref.codes.int()).abs().max() <= 1
    worse = (got.dequantize() - w).abs() - (ref.dequantize() - w).abs()
    assert float(worse.max()) <= 1e-5 * float(ref.scale.max()) + 1e-7


def test_gptq_worked_example_compensates_the_first_rounding_error():
    # Two perfectly correlated inputs (x1 = x2): only w1 + w2 matters. At 2 bits on the grid
    # {0, 1, 2, 3} * 1.0, w = [0.4, 0.4] rounds to [0, 0] (sum 0.0) under nearest rounding;
    # GPTQ rounds w1 = 0.4 -> 0, moves the error 0.4 onto w2 = 0.8 -> 1: sum 1.0, closer to 0.8.
    w = torch.tensor([[0.4, 0.4, 0.0, 3.0]])  # the 3.0 and 0.0 pin the grid: scale 1, zero point 0
    h = torch.zeros(4, 4)
    h[:2, :2] = 1.0
    h[2, 2] = h[3, 3] = 1e-3
    cfg = QuantConfig(bits=2, damp=1e-6)
    assert quantize_weight(w, cfg).codes.tolist() == [[0, 0, 0, 3]]
    assert sorted(gptq_quantize(w, h, cfg).codes[0, :2].tolist()) == [0, 1]


def test_gptq_factor_is_reusable_across_widths_and_checks_shapes():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, groups=2)
    stats = InputStats(conv)
    stats.add(torch.randn(4, 8, 7, 7))
    factor = gptq_factor(stats.hessian, 0.01)
    for bits in (2, 5):
        cfg = QuantConfig(bits=bits)
        a = gptq_quantize(conv.weight, stats.hessian, cfg, groups=2)
        b = gptq_quantize(conv.weight, factor, cfg, groups=2)
        assert torch.equal(a.codes, b.codes)
    with pytest.raises(ValueError, match="conv: Hessian of shape"):
        gptq_quantize(conv.weight, stats.hessian, QuantConfig(bits=4), "conv", groups=1)
    with pytest.raises(ValueError, match="groups=4 does not divide 6"):
        gptq_quantize(conv.weight, stats.hessian, QuantConfig(bits=4), groups=4)
    # No input statistics at all: nearest rounding, not a failure.
    zero = gptq_quantize(conv.weight, torch.zeros_like(stats.hessian), QuantConfig(bits=3), groups=2)
    assert torch.equal(zero.codes, quantize_weight(conv.weight, QuantConfig(bits=3)).codes)


def _output_error(q, model, batches):
    with torch.no_grad():
        return sum((q(x) - model(x)).pow(2).sum().item() for x in batches)


@pytest.mark.parametrize("bits", range(1, 9))
def test_data_aware_output_error_is_below_nearest_rounding_at_every_width(bits):
    model, batches = _small_cnn_and_data()
    errors = {name: _output_error(fxquant.quantize(model, bits, config=cfg, calib_loader=batches), model, batches)
              for name, cfg in [("nearest", NEAREST), ("gptq", GPTQ_ONLY), ("gptq+bc", QuantConfig())]}
    assert errors["gptq"] < errors["nearest"], errors
    assert errors["gptq+bc"] < errors["nearest"], errors


def test_bias_correction_matches_calibration_output_means_of_every_layer():
    model, batches = _small_cnn_and_data()
    q = fxquant.quantize(model, 2, config=BC_ONLY, calib_loader=batches)
    names = fxquant.quantizable_layers(model)
    means = {}
    for tag, net in (("float", model), ("quant", q)):
        sums, hooks = {}, []
        for name in names:
            mod = net.get_submodule(name)
            dim = -1 if "fc" in name else 1

            def hook(_m, _i, out, name=name, dim=dim):
                sums.setdefault(name, []).append(out.movedim(dim, -1).reshape(-1, out.shape[dim]))
            hooks.append(mod.register_forward_hook(hook))
        with torch.no_grad():
            for x in batches:
                net(x)
        for h in hooks:
            h.remove()
        means[tag] = {n: torch.cat(v).mean(dim=0) for n, v in sums.items()}
    plain = fxquant.quantize(model, 2, config=NEAREST)
    for name in names:
        torch.testing.assert_close(means["quant"][name], means["float"][name], atol=1e-4, rtol=1e-4)
    # ...which plain rounding does not achieve (the test can fail).
    with torch.no_grad():
        gap = (plain.c2(torch.relu(plain.bn1(plain.c1(batches[0])))).mean(dim=(0, 2, 3))
               - model.c2(torch.relu(model.bn1(model.c1(batches[0])))).mean(dim=(0, 2, 3))).abs().max()
    assert gap > 1e-3
    assert q.c1.bias is not None and model.c1.bias is None  # created for the correction, model untouched


def test_sequential_quantize_falls_back_to_nearest_for_layers_without_one_module_call():
    model, x, _ = build("called_twice")
    gm = passes.trace(model)
    layers = passes.find_layers(gm)
    assert [lay.name for lay in data_aware_layers(gm, layers)] == ["out"]
    cfg = QuantConfig(bits=3).data_aware(True)
    got = sequential_quantize(gm, {lay.name: 3 for lay in layers}, cfg, [x], layers=layers)
    shared = got["shared"][0]
    assert torch.equal(shared.codes, quantize_weight(model.shared.weight, cfg.with_bits(3)).codes)
    assert got["shared"][1] is None and got["out"][1] is not None


# ----------------------------------------------------------------------------- API


def test_config_resolution_and_errors():
    assert QuantConfig().data_aware(True).rounding == "gptq"
    auto = QuantConfig().data_aware(False)
    assert (auto.rounding, auto.bias_correction, auto.needs_data) == ("nearest", False, False)
    with pytest.raises(ValueError, match="needs calibration data: pass calib_loader"):
        QuantConfig(rounding="gptq").data_aware(False)
    for field, bad in (("rounding", "adaround"), ("bias_correction", 1), ("damp", 0.0), ("calib_samples", 0)):
        with pytest.raises(ValueError, match=f"QuantConfig.{field}"):
            QuantConfig(**{field: bad})
    model, batches = _small_cnn_and_data()
    with pytest.raises(ValueError, match="needs calibration data"):
        fxquant.quantize(model, 4, config=QuantConfig(rounding="gptq"))


def test_quantize_without_data_is_plain_rounding_and_model_is_untouched():
    model, batches = _small_cnn_and_data()
    before = copy.deepcopy(model.state_dict())
    a = fxquant.quantize(model, 3)
    b = fxquant.quantize(model, 3, config=NEAREST, calib_loader=batches)
    c = fxquant.quantize(model, 3, calib_loader=batches)
    with torch.no_grad():
        assert torch.equal(a(batches[0]), b(batches[0]))
        assert not torch.equal(a(batches[0]), c(batches[0]))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert set(model.state_dict()) == set(before)


def test_layer_quantizer_restores_weights_and_biases():
    model, batches = _small_cnn_and_data()
    gm = passes.trace(model)
    layers = passes.find_layers(gm)
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    lq = LayerQuantizer(gm, layers, QuantConfig().data_aware(True), batches)
    for lay in layers:
        lq.apply(lay, 2)
    assert gm.c1.bias is not None
    lq.restore()
    assert gm.c1.bias is None
    assert set(gm.state_dict()) == set(before)
    assert all(torch.equal(v, gm.state_dict()[k]) for k, v in before.items())


def test_compress_builds_the_model_it_measured_with_data_aware_rounding(tmp_path):
    model, batches = _small_cnn_and_data(96)
    with torch.no_grad():
        calib = [(x, model(x).argmax(1)) for x in batches]
    q = fxquant.compress(model, calib, method="paper", margin="fixed", t_init=3.0, verbose=False)
    result = q.meta["fxquant"]
    assert result.config.quant.rounding == "gptq" and result.config.quant.bias_correction
    assert fxquant.AccuracyOracle(calib)(q) == pytest.approx(result.final_value)
    fxquant.save(q, tmp_path / "m.fxq")
    loaded = fxquant.load(tmp_path / "m.fxq", SmallCNN().eval())
    with torch.no_grad():
        assert torch.equal(loaded(batches[0]), q(batches[0]))


def test_compress_takes_statistics_from_stats_loader(caplog):
    model, batches = _small_cnn_and_data(96)
    with torch.no_grad():
        calib = [(x, model(x).argmax(1)) for x in batches]
    other = [torch.randn(16, 3, 20, 20, generator=torch.Generator().manual_seed(5))]
    with caplog.at_level("WARNING", logger="fxquant"):
        a = fxquant.compress(model, calib, method="paper", margin="fixed", t_init=3.0, verbose=False)
    assert "stats_loader" in caplog.text  # the overfitting risk is named
    caplog.clear()
    with caplog.at_level("WARNING", logger="fxquant"):
        b = fxquant.compress(model, calib, stats_loader=other, method="paper", margin="fixed", t_init=3.0,
                             verbose=False)
    assert "stats_loader" not in caplog.text
    same_bits = {n: 4 for n in a.meta["fxquant"].bits}
    qa = LayerQuantizer(passes.trace(model), passes.find_layers(passes.trace(model)),
                        QuantConfig().data_aware(True), [x for x, _ in calib])
    qb = LayerQuantizer(passes.trace(model), passes.find_layers(passes.trace(model)),
                        QuantConfig().data_aware(True), other)
    assert any(not torch.equal(qa.chosen(same_bits)[n][0].codes, qb.chosen(same_bits)[n][0].codes)
               for n in same_bits)
    # Each model's codes are GPTQ's on its own statistics images: b's on `other`, a's on the calibration images.
    for q, images in ((a, [x for x, _ in calib]), (b, other)):
        res = q.meta["fxquant"]
        expect = LayerQuantizer(passes.trace(model), passes.find_layers(passes.trace(model)), res.config.quant,
                                images).chosen(res.bits)
        for n, (qw, _) in expect.items():
            got = q.get_submodule(n).weight_codes()
            assert torch.equal(got.long(), qw.codes.long().view(got.shape)), n
    with pytest.raises(ValueError, match="stats_loader yielded no batches"):
        fxquant.compress(model, calib, stats_loader=[], verbose=False)
    assert b.meta["fxquant"].config.quant.rounding == "gptq"
