"""The sensitivity search (method="sensitivity") and budget mode: exact budgets, clear errors,
bits that do not depend on batch size, batch order or thread count; the paper's method unchanged."""

import json
import math
import re

import pytest
import torch
from torch import nn

import fxquant
from fxquant import SearchConfig
from fxquant.core.packing import packed_nbytes
from fxquant.fileformat.header import report_dict
from fxquant.fileformat.saveload import read_header
from fxquant.passes.sensitivity import canonical_batches


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 24, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(24, 24, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(24, 10)).eval()


def data(model: nn.Module, n: int = 256, seed: int = 1):
    """Inputs labelled by the float model itself (float accuracy 100%), and disjoint statistics inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y, [torch.randn(128, 3, 8, 8, generator=g)]


def batched(x, y, size, perm=None):
    if perm is not None:
        x, y = x[perm], y[perm]
    return list(zip(x.split(size), y.split(size)))


def run(model, calib, stats, **options):
    q = fxquant.compress(model, calib, stats_loader=stats, verbose=False, **options)
    return q, q.meta["fxquant"]


@pytest.mark.parametrize("options", [dict(target_bits=2.5), dict(method="sensitivity", t_init=3.0)])
def test_bits_do_not_depend_on_batch_size_or_order(options):
    model = small_cnn()
    x, y, stats = data(model)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(7))
    results = [run(model, batched(x, y, 8), stats, **options)[1],
               run(model, batched(x, y, 16), stats, **options)[1],
               run(model, batched(x, y, 16, perm), stats, **options)[1]]
    assert results[0].method == "sensitivity"
    assert results[0].bits == results[1].bits == results[2].bits
    assert results[0].sensitivity == results[1].sensitivity == results[2].sensitivity
    assert results[0].final_value == results[2].final_value


def test_bits_do_not_depend_on_thread_count():
    model = small_cnn()
    x, y, stats = data(model)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(model, batched(x, y, 32), stats, target_bits=2.0)[1]
        torch.set_num_threads(2)
        two = run(model, batched(x, y, 32), stats, target_bits=2.0)[1]
    finally:
        torch.set_num_threads(before)
    assert one.bits == two.bits


def test_canonical_batches_ignore_order_and_batching():
    x = torch.randn(50, 2, 3)
    a = canonical_batches(list(x.split(7)), samples=20, batch=8)
    b = canonical_batches(list(x[torch.randperm(50)].split(13)), samples=20, batch=8)
    assert [t.shape[0] for t in a] == [8, 8, 4]
    assert all(torch.equal(s, t) for s, t in zip(a, b))


@pytest.mark.parametrize("target", [2.41, 2.77, 3.5, 8.0])  # 2.4058 is the smallest feasible here
def test_target_bits_is_an_exact_upper_bound(target):
    model = small_cnn()
    x, y, stats = data(model, n=128)
    q, res = run(model, batched(x, y, 32), stats, target_bits=target, keep_8bit={"8"},
                 filter_fn=lambda m, name: name != "0")  # one layer float (32 bits), one kept at 8
    rep = fxquant.report(q)
    params = {lay.name: lay.params for lay in rep.layers}
    bit_params = sum(params[n] * (32 if lay.bits is None else lay.bits) for n, lay in
                     ((lay.name, lay) for lay in rep.layers))
    assert bit_params <= target * sum(params.values())
    assert rep.average_bits <= target + 1e-12
    assert res.bits["8"] == 8 and "0" not in res.bits


def test_target_bits_uses_the_budget():
    model = small_cnn()
    x, y, stats = data(model, n=128)
    _, low = run(model, batched(x, y, 32), stats, target_bits=2.0)
    _, high = run(model, batched(x, y, 32), stats, target_bits=4.0)
    chosen = [p for p in high.frontier if p.chosen]
    assert len(chosen) == 1 and 3.0 < chosen[0].average_bits <= 4.0  # near the budget, not far below
    assert sum(high.bits.values()) > sum(low.bits.values())


def test_max_bytes_bounds_packed_storage():
    model = small_cnn()
    x, y, stats = data(model, n=128)
    for limit in (3000, 5000):
        q, _ = run(model, batched(x, y, 32), stats, max_bytes=limit)
        rep = fxquant.report(q)
        assert rep.packed_bytes + rep.grid_bytes <= limit


def test_infeasible_budget_names_the_smallest_feasible_one():
    model = small_cnn()
    x, y, stats = data(model, n=64)
    layers = fxquant.quantizable_layers(model)
    params = {n: p.numel() for n, p in model.named_parameters() if n.endswith("weight")}
    total = sum(params.values())
    smallest = (sum(params[f"{n}.weight"] for n in layers if n != "8") + 8 * params["8.weight"]) / total
    shown = math.ceil(smallest * 1e4) / 1e4
    with pytest.raises(ValueError, match=re.escape(f"target_bits=1.0 is infeasible: the smallest feasible budget "
                                                   f"is target_bits={shown} ")) as info:
        run(model, batched(x, y, 32), stats, target_bits=1.0, keep_8bit={"8"})
    assert "kept at 8 bits" in str(info.value)
    q, _ = run(model, batched(x, y, 32), stats, target_bits=shown, keep_8bit={"8"})  # the named budget fits
    assert set(q.meta["fxquant"].bits.values()) == {1, 8}
    with pytest.raises(ValueError, match=r"max_bytes=100 is infeasible: the smallest feasible budget is "
                                         r"max_bytes=\d+"):
        run(model, batched(x, y, 32), stats, max_bytes=100)
    with pytest.raises(ValueError, match="smallest feasible budget is target_bits=2"):
        run(model, batched(x, y, 32), stats, target_bits=1.5, candidates=(2, 4, 8))


def test_config_validation():
    field = r"SearchConfig\.{} must"  # the message names the field at fault
    for bad, message in ((dict(method="greedy"), field.format("method")),
                         (dict(target_bits=0), field.format("target_bits")),
                         (dict(target_bits=float("nan")), field.format("target_bits")),
                         (dict(max_bytes=0), field.format("max_bytes")),
                         (dict(max_bytes=1.5), field.format("max_bytes")),
                         (dict(target_bits=2.0, max_bytes=100), "target_bits or max_bytes, not both"),
                         (dict(method="paper", target_bits=2.0), "method='paper' has no budget mode"),
                         (dict(sensitivity_samples=-1), field.format("sensitivity_samples")),
                         (dict(budget_checks=0), field.format("budget_checks")),
                         (dict(accept_sigmas=-1.0), field.format("accept_sigmas"))):
        with pytest.raises(ValueError, match=message):
            SearchConfig(**bad)
    assert SearchConfig().resolved_method == SearchConfig(target_bits=2).resolved_method == "sensitivity"
    assert SearchConfig(method="paper").resolved_method == "paper"


@pytest.mark.parametrize("option", [dict(margin="fixed"), dict(importance_scale="max"), dict(edge_factor=1.0),
                                    dict(strategy="bisect")])
def test_paper_only_options_need_the_paper_method(option):
    (name, value), = option.items()
    for method in ("auto", "sensitivity"):
        with pytest.raises(ValueError, match=rf"{name}={value!r} only steer.*method='paper'"):
            SearchConfig(method=method, **option)
    assert getattr(SearchConfig(method="paper", **option), name) == value


def test_the_default_is_the_sensitivity_search_and_paper_is_selectable_by_name():
    model = small_cnn()
    x, y, stats = data(model, n=64)
    _, default = run(model, batched(x, y, 32), stats)
    _, sens = run(model, batched(x, y, 32), stats, method="sensitivity")
    _, paper = run(model, batched(x, y, 32), stats, method="paper")
    assert default.method == sens.method == "sensitivity" and paper.method == "paper"
    assert default.bits == sens.bits and default.frontier == sens.frontier
    assert paper.decisions and not default.decisions


def test_auto_runs_the_paper_search_when_a_custom_oracle_has_no_inputs(caplog):
    model = small_cnn()
    x, y, _ = data(model, n=64)

    def oracle(m):
        with torch.no_grad():
            return 100.0 * float((m(x).argmax(1) == y).float().mean())

    nearest = fxquant.QuantConfig(rounding="nearest", bias_correction=False)
    with caplog.at_level("INFO", logger="fxquant.search"):
        auto = fxquant.compress(model, oracle=oracle, verbose=False, quant=nearest).meta["fxquant"]
    paper = fxquant.compress(model, oracle=oracle, verbose=False, quant=nearest, method="paper").meta["fxquant"]
    assert auto.method == "paper" and auto.bits == paper.bits and auto.decisions == paper.decisions
    assert "custom oracle and no calibration inputs" in caplog.text
    with pytest.raises(ValueError, match="calib_loader"):  # asked for by name: no fallback
        fxquant.compress(model, oracle=oracle, verbose=False, quant=nearest, method="sensitivity")


def test_report_carries_sensitivities_and_frontier(tmp_path):
    model = small_cnn()
    x, y, stats = data(model, n=64)
    q, res = run(model, batched(x, y, 32), stats, target_bits=3.0)
    rep = fxquant.report(q)
    assert rep.method == "sensitivity"
    for lay in rep.layers:
        assert lay.sensitivity and set(lay.sensitivity) <= set(range(1, 9))
        assert lay.sensitivity == res.sensitivity[lay.name]
    assert sum(p["chosen"] for p in rep.frontier) == 1
    back = fxquant.CompressionReport.from_dict(json.loads(rep.to_json()))
    assert back.layers == rep.layers and back.frontier == rep.frontier
    assert "frontier points" in rep.to_text()
    path = fxquant.plot(rep, tmp_path / "frontier.png")
    assert path.stat().st_size > 0


def test_sensitivity_with_a_user_oracle():
    model = small_cnn()
    x, y, stats = data(model, n=64)

    calls = []

    def oracle(m):
        calls.append(1)
        with torch.no_grad():
            return 100.0 * float((m(x).argmax(1) == y).float().mean())

    q = fxquant.compress(model, batched(x, y, 32), oracle=oracle, stats_loader=stats, verbose=False,
                         target_bits=3.0)
    res = q.meta["fxquant"]
    assert fxquant.report(q).average_bits <= 3.0 and res.method == "sensitivity"
    assert calls and res.oracle_calls >= 1  # the user's oracle checked the budget's candidates
    n = len(calls)
    assert res.final_value == pytest.approx(oracle(q), abs=1e-6) and len(calls) == n + 1
    with pytest.raises(ValueError, match="calib_loader"):
        fxquant.compress(model, oracle=oracle, verbose=False, target_bits=3.0,
                         quant=fxquant.QuantConfig(rounding="nearest", bias_correction=False))


def test_sensitivities_and_frontier_survive_save_and_load(tmp_path):
    model = small_cnn()
    x, y, stats = data(model, n=64)
    q, res = run(model, batched(x, y, 32), stats, target_bits=3.0)
    fxquant.save(q, tmp_path / "m.fxq")
    back = fxquant.load(tmp_path / "m.fxq", small_cnn()).meta["fxquant"]
    assert back.method == "sensitivity" and back.sensitivity == res.sensitivity and back.frontier == res.frontier
    header = read_header(tmp_path / "m.fxq")
    assert header["report"]["frontier"] == "search"  # stored once
    shown = fxquant.CompressionReport.from_dict(report_dict(header))
    assert shown.frontier == fxquant.report(q).frontier and len(shown.frontier) == len(res.frontier)
