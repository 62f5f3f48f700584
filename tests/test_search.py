"""The bit-width search, the oracle, compress() and the report."""

import copy
import json
import logging
import math
import re

import pytest
import torch
import torchvision
from torch import nn

import fxquant
from fxquant import passes
from fxquant import AccuracyOracle, QuantConfig, SearchConfig
from fxquant.passes.search import _margin
from tests.models import ZOO, build

PER_TENSOR = QuantConfig(granularity="per_tensor")


class OneBitAndEightBit(nn.Module):
    """``a`` (one weight, 1.0) is exact at every width; ``b`` holds the full 8-bit grid
    {j/255} (per tensor) and its logits pick the grid value nearest the input, so any
    width below 8 changes most predictions."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(1, 1, bias=False)
        self.b = nn.Linear(1, 256)
        grid = torch.arange(256, dtype=torch.float32) / 255
        with torch.no_grad():
            self.a.weight.fill_(1.0)
            self.b.weight.copy_(grid.view(-1, 1))
            self.b.bias.copy_(-grid**2 / 2)

    def forward(self, x):
        return self.b(self.a(x))


def _known_answer_data():
    s = torch.rand(512, 1, generator=torch.Generator().manual_seed(0))
    return [(s[i:i + 128], torch.round(s[i:i + 128, 0] * 255).long()) for i in range(0, 512, 128)]


def _labelled_by_model(model, x, batch=32):
    """Calibration batches labelled with the float model's own predictions (baseline near 100%)."""
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, x.shape[0], batch)]


@pytest.mark.parametrize("margin", ["adaptive", "fixed"])
@pytest.mark.parametrize("strategy", ["sequential", "bisect"])
def test_known_answer_one_layer_takes_1_bit_the_other_needs_8(margin, strategy):
    model = OneBitAndEightBit().eval()
    calib = _known_answer_data()
    assert AccuracyOracle(calib)(model) == 100.0
    q = fxquant.compress(model, calib, quant=PER_TENSOR, method="paper", margin=margin, strategy=strategy,
                         verbose=False)
    result = q.meta["fxquant"]
    assert result.bits == {"a": 1, "b": 8}
    assert [d.name for d in result.decisions] == ["b", "a"]  # b is more important (more params)
    assert result.final_value == 100.0 and AccuracyOracle(calib)(q) == 100.0
    assert fxquant.report(q).average_bits == pytest.approx((1 * 1 + 256 * 8) / 257)


def test_margins_fixed_adaptive_rescaled_and_edges():
    cfg = SearchConfig(t_init=0.5)
    assert _margin(cfg, 0.2, 0.4, edge=False) == pytest.approx(0.1)  # eq. 4, literal
    assert _margin(cfg, 0.2, 0.4, edge=True) == pytest.approx(0.05)
    assert _margin(SearchConfig(t_init=0.5, method="paper", importance_scale="max"), 0.2, 0.4,
                   False) == pytest.approx(0.25)
    assert _margin(SearchConfig(t_init=0.5, method="paper", margin="fixed"), 0.2, 0.4, False) == pytest.approx(0.5)
    assert _margin(SearchConfig(t_init=0.5, method="paper", margin="fixed"), 0.2, 0.4, True) == pytest.approx(0.25)


def _weight_error_oracle(reference: nn.Module):
    """A deterministic user oracle: 100 minus the summed relative weight error, in points."""
    ref = {k: v.clone() for k, v in reference.state_dict().items() if k.endswith("weight")}

    def oracle(model):
        sd = model.state_dict()
        return 100.0 - sum(100 * float((sd[k] - v).norm() / v.norm()) for k, v in ref.items() if k in sd)

    return oracle


def test_fixed_margin_decisions_use_t_init_and_adaptive_is_stricter():
    model, x, names = build("conv_zoo")
    oracle = _weight_error_oracle(model)
    fixed = fxquant.compress(model, oracle=oracle, method="paper", margin="fixed", t_init=5.0,
                             verbose=False).meta["fxquant"]
    adaptive = fxquant.compress(model, oracle=oracle, method="paper", margin="adaptive", t_init=5.0,
                                verbose=False).meta["fxquant"]
    edges = {names[0], names[-1]}
    for d in fixed.decisions:
        assert d.margin == pytest.approx(5.0 * (0.5 if d.name in edges else 1.0))
        assert d.threshold == pytest.approx(fixed.baseline_value - d.margin)
        assert d.accuracy >= d.threshold or d.bits == 8
    infos = {i.name: i for i in passes.layer_infos(fxquant.compress(model, oracle=oracle, verbose=False))}
    for d in adaptive.decisions:
        assert d.margin == pytest.approx(5.0 * infos[d.name].importance * (0.5 if d.name in edges else 1.0))
    assert sum(adaptive.bits.values()) >= sum(fixed.bits.values())
    assert adaptive.bits != fixed.bits


FAST_CASES = ["conv_zoo", "tiny_vit", "called_twice", "tied", "functional", "untraceable_block",
              "spectral1d", "hyperspectral3d"]


@pytest.mark.parametrize("name", FAST_CASES)
def test_fast_evaluation_gives_the_naive_decisions(name):
    model, _, _ = build(name)
    shape = ZOO[name][1]
    x = torch.randn((96, *shape[1:]), generator=torch.Generator().manual_seed(5))
    calib = _labelled_by_model(model, x)
    runs = {ev: fxquant.compress(model, calib, method="paper", margin="fixed", t_init=3.0, evaluation=ev, verbose=False)
            for ev in ("naive", "fast")}
    naive, fast = (runs[ev].meta["fxquant"] for ev in ("naive", "fast"))
    assert fast.evaluation == "fast" and naive.evaluation == "naive"
    assert fast.bits == naive.bits
    assert [(d.name, d.bits, d.accuracy) for d in fast.decisions] == \
           [(d.name, d.bits, d.accuracy) for d in naive.decisions]
    assert fast.final_value == naive.final_value == AccuracyOracle(calib)(runs["fast"])
    assert fast.layer_forwards <= naive.layer_forwards


def test_fast_evaluation_on_resnet_with_inplace_relu():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calib = _labelled_by_model(model, x)
    kw = dict(method="paper", margin="fixed", t_init=4.0, candidates=(2, 4, 8), verbose=False)
    naive = fxquant.compress(model, calib, evaluation="naive", **kw).meta["fxquant"]
    fast = fxquant.compress(model, calib, evaluation="fast", **kw).meta["fxquant"]
    assert fast.evaluation == "fast"
    assert fast.bits == naive.bits and fast.final_value == naive.final_value
    assert fast.layer_forwards < 0.8 * naive.layer_forwards


def test_bisect_makes_fewer_oracle_calls_and_meets_each_threshold():
    model, _, _ = build("conv_zoo")
    oracle = _weight_error_oracle(model)  # monotone in bits: bisection finds the same widths
    kw = dict(oracle=oracle, method="paper", margin="fixed", t_init=20.0, verbose=False)
    seq = fxquant.compress(model, **kw).meta["fxquant"]
    bis = fxquant.compress(model, strategy="bisect", **kw).meta["fxquant"]
    assert 2 < sum(seq.bits.values()) / len(seq.bits) < 7  # answers are mid-range, not at an end
    assert bis.bits == seq.bits
    assert bis.oracle_calls < seq.oracle_calls
    for d in bis.decisions:
        assert d.accuracy >= d.threshold or d.bits == 8


def test_compress_leaves_model_untouched_is_deterministic_and_reports():
    model, x, names = build("tiny_vit")
    before = copy.deepcopy(model.state_dict())
    calib = _labelled_by_model(model, torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(2)))
    q1 = fxquant.compress(model, calib, method="paper", margin="fixed", t_init=2.0, verbose=False)
    q2 = fxquant.compress(model, calib, method="paper", margin="fixed", t_init=2.0, verbose=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert q1.meta["fxquant"].bits == q2.meta["fxquant"].bits
    with torch.no_grad():
        assert torch.equal(q1(x), q2(x))
    rep = fxquant.report(q1)
    assert [lay.name for lay in rep.layers] == names
    assert {lay.name: lay.bits for lay in rep.layers} == q1.meta["fxquant"].bits
    assert rep.final_value == AccuracyOracle(calib)(q1)
    assert rep.packed_bytes == sum(math.ceil(lay.params * lay.bits / 8) for lay in rep.layers)
    again = fxquant.CompressionReport.from_dict(json.loads(rep.to_json()))
    assert again == rep
    text = rep.to_text()
    assert "attn.in_proj_weight" in text and "average bits (eq. 5)" in text


def test_filter_fn_and_keep_8bit():
    model, _, names = build("conv_zoo")
    calib = _labelled_by_model(model, torch.randn(64, 3, 12, 12, generator=torch.Generator().manual_seed(3)))
    q = fxquant.compress(model, calib, filter_fn=lambda m, n: n != "head", keep_8bit=["stem"], method="paper",
                         margin="fixed",
                         t_init=5.0, verbose=False)
    result = q.meta["fxquant"]
    assert "head" not in result.bits and result.bits["stem"] == 8
    assert "stem" not in {d.name for d in result.decisions}
    assert type(q.head) is nn.Linear
    rep = fxquant.report(q)
    assert {lay.name: lay.bits for lay in rep.layers}["head"] is None


def test_progress_lines_and_silence(caplog):
    model, _, names = build("conv_zoo")
    calib = _labelled_by_model(model, torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(3)))
    stats = [torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(4))]
    with caplog.at_level(logging.INFO, logger="fxquant"):
        fxquant.compress(model, calib, stats_loader=stats, verbose=False)
        assert not [r for r in caplog.records if r.levelno >= logging.INFO]
        fxquant.compress(model, calib, verbose=True)  # the default search: each layer's KL per width
        lines = [r.getMessage() for r in caplog.records if r.name == "fxquant.search"]
        caplog.clear()
        fxquant.compress(model, calib, method="paper", verbose=True)  # the paper's: each layer's decision
        paper_lines = [r.getMessage() for r in caplog.records if r.name == "fxquant.search"]
    for name in names:
        assert any(re.search(rf"\] sensitivity {re.escape(name)}: 1:", line) for line in lines)
        assert any(f"] {name} importance=" in line and "bits" in line for line in paper_lines)
    assert "average bits" in lines[-1] and "frontier" in lines[-1]


@pytest.mark.parametrize(
    "loader, match",
    [([], "empty"),
     ([torch.randn(4, 3, 12, 12)], "pair"),
     ([(torch.randn(4, 3, 12, 12), torch.randn(4))], "integer"),
     ([(torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 2, 7]))], r"batch 0 has targets in \[0, 7\].*5 classes"),
     ([(torch.randn(4, 3, 12, 12), torch.tensor([0, 1]))], "2 targets"),
     (42, "iterable")],
)
def test_bad_calibration_input(loader, match):
    model, _, _ = build("conv_zoo")
    with pytest.raises(ValueError, match=match):
        fxquant.compress(model, loader, verbose=False)


def test_bad_oracle_and_options():
    model, _, _ = build("conv_zoo")
    with pytest.raises(ValueError, match="nan"):
        fxquant.compress(model, oracle=lambda m: float("nan"), verbose=False)
    with pytest.raises(ValueError, match="callable"):
        fxquant.compress(model, oracle=3.0, verbose=False)
    with pytest.raises(ValueError, match="marginn"):
        fxquant.compress(model, [], marginn="fixed", verbose=False)
    with pytest.raises(ValueError, match="candidates"):
        SearchConfig(candidates=(0, 4))
    with pytest.raises(ValueError, match="margin"):
        SearchConfig(margin="dynamic")
    with pytest.raises(ValueError, match="keep_8bit"):
        fxquant.compress(model, oracle=lambda m: 1.0, keep_8bit=["nope"], verbose=False)
