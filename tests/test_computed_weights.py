"""Weights computed at run time (issue 18 items 1-3): found, folded, quantized; the caller's model untouched.

Parametrizations (weight_norm, spectral_norm, custom), the legacy hook-based
weight/spectral norm, weight standardisation inside a conv subclass's forward,
and ``g * v / ||v||`` fed to ``F.linear``; then the weights fxquant leaves float,
counted without the layer finder, warned about and reported.
"""

import json
import logging

import pytest
import torch
from torch import nn

import fxquant
from fxquant import passes
from fxquant.cli.main import main as cli_main
from fxquant.fileformat.saveload import read_header
from fxquant.reporting.report import FLOAT_BITS, CompressionReport
from tests.models import COMPUTED, StdConv2d, build_computed

NAMES = sorted(COMPUTED)


def _class_snapshot(model: nn.Module) -> dict:
    """Every class the model's modules use, with its attribute dict (what ``remove_parametrizations`` edits).

    ``__slotnames__`` is left out: ``copy.deepcopy`` itself caches it on the class.
    """
    return {cls: {k: v for k, v in vars(cls).items() if k != "__slotnames__"}
            for cls in {type(m) for m in model.modules()}}


def _model_snapshot(model: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        out = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return out, state, [type(m) for m in model.modules()], _class_snapshot(model)


def _assert_untouched(model, x, snapshot):
    out, state, types, classes = snapshot
    assert [type(m) for m in model.modules()] == types
    assert _class_snapshot(model) == classes  # no property deleted from a (shared) dynamic class
    now = model.state_dict()
    assert list(now) == list(state) and all(torch.equal(now[k], v) for k, v in state.items())
    with torch.no_grad():
        assert torch.equal(model(x), out)


def _relative_error(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name", NAMES)
def test_computed_weight_is_found_and_quantized(name):
    model, x, expected = build_computed(name)
    assert fxquant.quantizable_layers(model) == expected
    q = fxquant.quantize(model, 8)
    rep = fxquant.report(q)
    assert [lay.name for lay in rep.layers] == expected and all(lay.bits == 8 for lay in rep.layers)
    assert rep.float_weights == {} and rep.float_fraction == 0.0
    assert rep.average_bits == pytest.approx(8.0)
    assert not any(isinstance(p, nn.Parameter) and p.dim() >= 2 for p in q.parameters())  # all packed
    with torch.no_grad():
        ref = model(x)
        assert _relative_error(q(x), ref) < 0.05  # 8-bit: equal up to quantization error
        assert _relative_error(fxquant.quantize(model, 2)(x), ref) > _relative_error(q(x), ref)


@pytest.mark.parametrize("name", NAMES)
def test_callers_model_and_classes_are_never_changed(name):
    model, x, _ = build_computed(name)
    snapshot = _model_snapshot(model, x)
    first = fxquant.quantize(model, 4)
    _assert_untouched(model, x, snapshot)
    second = fxquant.quantize(model, 4)  # a second run sees the same model
    with torch.no_grad():
        assert torch.equal(first(x), second(x))
    calib = [(x, torch.zeros(len(x), dtype=torch.long))]
    fxquant.compress(model, calib, candidates=(4, 8), verbose=False)
    _assert_untouched(model, x, snapshot)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_into_a_fresh_instance(name, tmp_path):
    model, x, _ = build_computed(name)
    q = fxquant.quantize(model, 4)
    path = tmp_path / "m.fxq"
    fxquant.save(q, path)
    fresh, _, _ = build_computed(name, seed=1)  # other weights: replaced by the file's
    snapshot = _model_snapshot(fresh, x)
    loaded = fxquant.load(path, fresh)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
    assert fxquant.report(loaded) == fxquant.report(q)
    _assert_untouched(fresh, x, snapshot)


def test_folding_drops_the_raw_parameters_and_keeps_buffers():
    model, x, _ = build_computed("std_conv")
    gm = passes.trace(model)
    names = dict(gm.named_parameters())
    assert "conv.gain" not in names  # consumed by the folded standardisation only
    assert names["conv.weight"].shape == model.conv.weight.shape
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-5)

    class Masked(nn.Module):  # a buffer the folded computation reads stays in the state_dict
        def __init__(self):
            super().__init__()
            self.v = nn.Parameter(torch.randn(4, 6))
            self.register_buffer("mask", (torch.arange(24).view(4, 6) % 3 > 0).float())

        def forward(self, x):
            return nn.functional.linear(x, self.v * self.mask)

    masked, x = Masked().eval(), torch.randn(3, 6)
    gm = passes.trace(masked)
    assert passes.find_layers(gm)[0].name == "v"  # folded in place: the parameter with the result's size
    assert torch.equal(dict(gm.named_buffers())["mask"], masked.mask)
    assert torch.equal(gm.v, masked.v * masked.mask)
    with torch.no_grad():
        assert torch.allclose(gm(x), masked(x))


def test_a_weight_read_elsewhere_is_folded_under_a_new_name():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 6))

        def forward(self, x):
            return nn.functional.linear(x, self.w * 2.0) + self.w.sum()

    model, x = M().eval(), torch.randn(3, 6)
    gm = passes.trace(model)
    assert passes.find_layers(gm)[0].name == "w_folded"
    assert isinstance(gm.w, nn.Parameter)  # still read by the sum
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x))


def test_timm_weight_standardised_convs_are_quantized():
    import timm
    from timm.layers import ScaledStdConv2d, StdConv2d as TimmStdConv2d

    model = nn.Sequential(TimmStdConv2d(3, 8, 3, padding=1), nn.ReLU(), ScaledStdConv2d(8, 8, 3, padding=1),
                          nn.Flatten(), nn.Linear(8 * 16, 4)).eval()
    x = torch.randn(2, 3, 4, 4)
    snapshot = _model_snapshot(model, x)
    q = fxquant.quantize(model, 8)
    assert fxquant.report(q).float_weights == {}
    assert len(fxquant.report(q).layers) == 3
    with torch.no_grad():
        assert _relative_error(q(x), model(x)) < 0.05
    _assert_untouched(model, x, snapshot)
    assert timm.__version__


# ----------------------------------------------------------------------------- weights left float


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = StdConv2d(3, 8, 3, padding=1)

    def forward(self, x):
        if x.sum() > float("-inf"):  # data-dependent: torch.fx keeps this module whole
            return self.conv(x)
        return x


def _with_missed_weight():
    torch.manual_seed(0)
    return nn.Sequential(_Untraceable(), nn.Flatten(), nn.Linear(8 * 16, 10)).eval(), torch.randn(2, 3, 4, 4)


def test_missed_weight_is_warned_reported_and_counted_at_32_bits(caplog, tmp_path):
    model, x = _with_missed_weight()
    with caplog.at_level(logging.WARNING, logger="fxquant"):
        q = fxquant.quantize(model, 4)
    warned = [r.getMessage() for r in caplog.records if "stay float32" in r.getMessage()]
    assert len(warned) == 1 and "0.conv.weight" in warned[0]
    rep = fxquant.report(q)
    conv, head = 8 * 3 * 3 * 3, 10 * 8 * 16
    assert rep.float_weights == {"0.conv.weight": conv}
    assert rep.float_fraction == pytest.approx(conv / (conv + head))
    assert rep.average_bits == pytest.approx((conv * FLOAT_BITS + head * 4) / (conv + head))
    assert "left float" in rep.to_text() and "0.conv.weight" in rep.to_text()
    assert CompressionReport.from_dict(json.loads(rep.to_json())) == rep

    path = tmp_path / "m.fxq"
    fxquant.save(q, path)
    header = read_header(path)
    assert header["report"]["float_weights"] == {"0.conv.weight": conv}
    assert fxquant.report(fxquant.load(path, _with_missed_weight()[0])) == rep
    assert cli_main(["inspect", str(path), "--json"]) == 0


def test_inspect_prints_the_float_weights(tmp_path, capsys):
    model, _ = _with_missed_weight()
    path = tmp_path / "m.fxq"
    fxquant.save(fxquant.quantize(model, 4), path)
    capsys.readouterr()
    assert cli_main(["inspect", str(path)]) == 0
    assert "left float" in capsys.readouterr().out


def test_layers_kept_float_on_purpose_are_reported_not_warned(caplog):
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with caplog.at_level(logging.WARNING, logger="fxquant"):
        q = fxquant.quantize(model, {"2": 4})
    assert not [r for r in caplog.records if "stay float32" in r.getMessage()]
    rep = fxquant.report(q)
    assert rep.float_weights == {"0.weight": 256}
    assert rep.average_bits == pytest.approx((256 * FLOAT_BITS + 64 * 4) / 320)


def test_coverage_counts_without_the_layer_finder():
    model, _ = _with_missed_weight()
    gm = passes.trace(model)
    assert [lay.name for lay in passes.find_layers(gm)] == ["2"]  # the finder misses the leaf's conv
    assert passes.float_weights(gm) == {"0.conv.weight": 216, "2.weight": 1280}
    assert passes.float_weights(model) == {"0.conv.weight": 216, "2.weight": 1280}


def test_reports_of_older_files_have_no_float_fields():
    model = nn.Sequential(nn.Linear(8, 4)).eval()
    data = fxquant.report(fxquant.quantize(model, 4)).to_dict()
    for key in ("float_weights", "float_fraction"):
        data.pop(key)
    old = CompressionReport.from_dict(data)
    assert old.float_weights is None and old.float_fraction is None
    assert "left float" not in old.to_text()


def test_chunks_of_one_computed_weight_are_folded_apart():
    class M(nn.Module):  # q, k, v projections cut from one scaled weight
        def __init__(self):
            super().__init__()
            self.qkv = nn.Parameter(torch.randn(12, 4))
            self.scale = nn.Parameter(torch.rand(12, 1) + 0.5)

        def forward(self, x):
            q, k, v = (self.qkv * self.scale).chunk(3)
            return nn.functional.linear(x, q) + nn.functional.linear(x, k) * nn.functional.linear(x, v)

    model, x = M().eval(), torch.randn(3, 4)
    gm = passes.trace(model)
    layers = passes.find_layers(gm)
    assert len(layers) == 3 and len({lay.name for lay in layers}) == 3
    assert sum(lay.params for lay in layers) == 48
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-6)
    assert fxquant.report(fxquant.quantize(model, 8)).float_weights == {}


def test_a_model_of_only_weight_standardised_convs_is_quantizable():
    model = nn.Sequential(StdConv2d(3, 4, 3), nn.ReLU(), StdConv2d(4, 2, 3)).eval()
    assert fxquant.quantizable_layers(model) == ["0.weight", "2.weight"]  # was "has no conv/linear weights"
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert _relative_error(fxquant.quantize(model, 8)(x), model(x)) < 0.05
