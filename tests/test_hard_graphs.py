"""Graphs that stress the fast evaluation and the rewrite: in-place writes (through views,
``torch.relu_``, into the input), dead branches, reparametrized weights, custom conv forwards."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

import fxquant
from fxquant import passes
from fxquant import AccuracyOracle


class WriteThroughView(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.head = nn.Linear(16, 32), nn.Linear(32, 10), nn.Linear(16, 32), nn.Linear(32, 10)

    def forward(self, x):
        s = self.a(x)
        w = s.view(-1, 32).add_(self.c(x))  # writes s through a view; b reads s afterwards
        return self.head(w) + self.b(s)


class ReluUnderscore(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 10)

    def forward(self, x):
        y = self.c1(x)
        u = self.c2(y)  # reads y before it is written in place
        return self.fc(torch.relu_(y) + u)


class InplaceResidual(nn.Module):
    """ResNet's pattern: in-place ReLU and ``out += identity``; fast evaluation stays on."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 10)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.c2(self.relu(self.c1(x)))
        out += x
        return self.fc(self.relu(out))


class DeadBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.aux, self.fc = nn.Linear(16, 32), nn.Linear(32, 5), nn.Linear(32, 10)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        _ = self.aux(y)  # computed, never used
        return self.fc(y)


class InplaceInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.fc = nn.Linear(16, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.c1(x.mul_(2.0))))


def _calib(model, n=192, batch=64):
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x.clone()).argmax(1)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _both(model, calib, **kw):
    kw = {"method": "paper", "margin": "fixed", "t_init": 3.0, "verbose": False, **kw}
    return {ev: fxquant.compress(model, calib, evaluation=ev, **kw) for ev in ("naive", "fast")}


@pytest.mark.parametrize("factory, fast_allowed", [(WriteThroughView, False), (ReluUnderscore, True),
                                                   (InplaceResidual, True), (DeadBranch, True)])
def test_fast_equals_naive_or_is_refused(factory, fast_allowed):
    torch.manual_seed(0)
    model = factory().eval()
    calib = _calib(model)
    runs = _both(model, calib)
    naive, fast = (runs[e].meta["fxquant"] for e in ("naive", "fast"))
    assert fast.evaluation == ("fast" if fast_allowed else "naive")
    assert fast.bits == naive.bits
    accepted = lambda r: [(d.name, d.bits, d.accuracy) for d in r.decisions]  # noqa: E731
    assert accepted(fast) == accepted(naive)
    for q, r in ((runs["naive"], naive), (runs["fast"], fast)):
        assert AccuracyOracle(calib)(q) == r.final_value  # the returned model is what was measured


def test_model_writing_into_its_input_leaves_calibration_data_alone():
    torch.manual_seed(0)
    model = InplaceInput().eval()
    calib = _calib(model)
    before = [x.clone() for x, _ in calib]
    runs = _both(model, calib)
    assert all(torch.equal(x, b) for (x, _), b in zip(calib, before))
    assert runs["fast"].meta["fxquant"].bits == runs["naive"].meta["fxquant"].bits
    fxquant.compress(model, calib, t_init=3.0, verbose=False)  # the default (sensitivity) search too
    assert all(torch.equal(x, b) for (x, _), b in zip(calib, before))


def test_reparametrized_weights_are_baked_and_quantized():
    torch.manual_seed(0)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.fc = weight_norm(nn.Linear(16, 32)), nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.c1(x)))

    model = M().eval()
    calib = _calib(model)
    state = copy.deepcopy(model.state_dict())
    q = fxquant.compress(model, calib, method="paper", margin="fixed", t_init=1.0, verbose=False)
    assert isinstance(q.c1, fxquant.QuantLinear)
    assert AccuracyOracle(calib)(q) == q.meta["fxquant"].final_value
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # caller's model intact


def test_conv_subclass_with_its_own_forward_keeps_it():
    class StdConv2d(nn.Conv2d):  # weight standardisation
        def forward(self, x):
            w = self.weight
            w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = StdConv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.fc = Block(), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.block(x).mean((2, 3)))

    torch.manual_seed(0)
    model, x = M().eval(), torch.randn(4, 3, 8, 8)
    traced = fxquant.quantize(model, 8)  # traced through: the standardised weight is folded and packed
    assert isinstance(traced.block.conv.weight, fxquant.PackedWeight)
    assert fxquant.report(traced).float_weights == {}
    with torch.no_grad():
        assert float((traced(x) - model(x)).abs().max()) < 0.05
    leaf = fxquant.quantize(model, 8, leaf_modules=["block"])  # inside a leaf: kept float, not broken
    assert type(leaf.block.conv) is StdConv2d
    assert fxquant.report(leaf).float_weights == {"block.conv.weight": 8 * 3 * 3 * 3}  # and reported
    with torch.no_grad():
        assert torch.allclose(leaf(x), fxquant.quantize(model, {"fc": 8}, leaf_modules=["block"])(x))


def test_buffers_are_not_layers():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("basis", torch.randn(16, 16))
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(x @ self.basis)

    assert fxquant.quantizable_layers(M()) == ["fc"]


def test_report_ratio_counts_only_packed_layers_and_cache_follows_to():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    q = fxquant.quantize(model, {"2": 4})  # the big layer stays float
    rep = fxquant.report(q)
    assert rep.float32_bytes == 4 * 64 * 4
    assert rep.compression_ratio < 32 / 4
    fxquant.set_weight_cache(q, True)
    q(torch.randn(1, 64))
    assert q.get_submodule("2")._weight_cache is not None
    q.to(torch.float64)
    assert q.get_submodule("2")._weight_cache.dtype == torch.float64


def test_dequantize_leaves_float_codes_alone_and_handles_empty_weights():
    codes = torch.tensor([[1.0, 2.0]])
    fxquant.dequantize(codes, torch.tensor([2.0]), torch.tensor([1.0]))
    assert codes.tolist() == [[1.0, 2.0]]
    assert fxquant.quantize_weight(torch.zeros(0, 5), fxquant.QuantConfig(bits=4)).dequantize().shape == (0, 5)


def test_compress_argument_checks():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    calib = _calib(model)
    q = fxquant.compress(model, calib, keep_8bit="2", verbose=False)  # one name, not its characters
    assert q.meta["fxquant"].bits["2"] == 8
    with pytest.raises(ValueError, match="filter_fn keeps float"):
        fxquant.compress(model, calib, keep_8bit=["2"], filter_fn=lambda m, n: n != "2", verbose=False)
    with pytest.raises(ValueError, match="no quantized module for Linear"):
        fxquant.compress(model, calib, mapping={}, verbose=False)


def test_mixed_shape_batches_and_narrow_integer_targets():
    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    torch.manual_seed(0)
    model = Pool().eval()
    batches = []
    for size in (8, 10):  # batches of different image sizes: fine for this model
        x = torch.randn(16, 3, size, size)
        with torch.no_grad():
            batches.append((x, model(x).argmax(1).to(torch.uint8)))
    runs = {ev: fxquant.compress(model, batches, evaluation=ev, method="paper", margin="fixed", t_init=5.0,
                                 verbose=False)
            for ev in ("naive", "fast")}
    assert runs["naive"].meta["fxquant"].bits == runs["fast"].meta["fxquant"].bits


def test_graph_html_inserts_layer_names_as_text_only(tmp_path):
    model = nn.Sequential()
    model.add_module("<img src=x onerror=alert(1)>", nn.Linear(12, 3))
    drawing = fxquant.draw(fxquant.quantize(model, 4), tmp_path / "g")
    page = drawing.html.read_text()
    assert "<img src=x" not in page  # escaped in the SVG text and data attributes
    assert "innerHTML" not in page  # the panel is built with textContent
