"""fxquant.explore: one measurement, any number of budgets, each the model compress would return."""

import dataclasses
import logging
import re

import pytest
import torch

import fxquant
from tests.test_search_robust import batched, data, small_cnn


@pytest.fixture(scope="module")
def setup():
    model = small_cnn()
    x, y, stats = data(model)
    calib = batched(x, y, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ex = fxquant.explore(model, calib, stats_loader=stats, verbose=False, keep_8bit={"8"})
    yield model, x, calib, stats, ex, before
    ex.close()


@pytest.mark.parametrize("budget", [dict(target_bits=2.0), dict(target_bits=3.5), dict(max_bytes=6000)])
def test_each_budget_gives_what_compress_gives(setup, budget):
    model, x, calib, stats, ex, _ = setup
    ref = fxquant.compress(model, calib, stats_loader=stats, verbose=False, keep_8bit={"8"}, **budget)
    got = ex.compress(**budget)
    r, g = ref.meta["fxquant"], got.meta["fxquant"]
    # every field (widths, values, frontier, config, oracle calls and layer-forwards counted as one call)
    assert dataclasses.replace(g, seconds=r.seconds) == r
    assert g.seconds >= ex.measure_seconds
    assert g.sensitivity is not ex.sensitivity and g.sensitivity == ex.sensitivity
    with torch.no_grad():
        assert torch.equal(got(x[:16]), ref(x[:16]))  # same packed weights, same graph
    rep = fxquant.report(got)
    assert [lay.bits for lay in rep.layers] == [lay.bits for lay in fxquant.report(ref).layers]


def test_results_are_independent_and_the_model_untouched(setup):
    model, x, _, _, ex, before = setup
    low = ex.compress(target_bits=1.5)
    out_low = low(x[:8])
    high = ex.compress(target_bits=6.0)
    assert low.meta["fxquant"].bits != high.meta["fxquant"].bits
    assert torch.equal(low(x[:8]), out_low)  # compressing again changed nothing of the first model
    assert fxquant.report(low).average_bits <= 1.5 < fxquant.report(high).average_bits <= 6.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_frontier_runs_from_small_to_large(setup):
    *_, ex, _ = setup
    pts = ex.frontier()
    assert len(pts) >= 2 and all(p.value is None for p in pts)
    bits = [p.average_bits for p in pts]
    assert bits == sorted(bits) and [p.sensitivity for p in pts] == sorted((p.sensitivity for p in pts), reverse=True)
    assert set(ex.sensitivity) == {"0", "2", "4"}  # layer "8" is kept at 8 bits, not measured
    chosen = ex.compress(target_bits=2.5).meta["fxquant"]
    assert any(abs(p.average_bits - next(f.average_bits for f in chosen.frontier if f.chosen)) < 1e-12 for p in pts)


def test_errors_name_the_argument(setup):
    model, _, calib, stats, ex, _ = setup
    with pytest.raises(ValueError, match="needs a budget"):
        ex.compress()
    with pytest.raises(ValueError, match=re.escape("target_bits=1.0 is infeasible: the smallest feasible budget")):
        ex.compress(target_bits=1.0)
    with pytest.raises(ValueError, match="max_bytes must be an int"):
        ex.compress(max_bytes=1.5)
    with pytest.raises(ValueError, match="pass target_bits/max_bytes to Exploration.compress"):
        fxquant.explore(model, calib, stats_loader=stats, target_bits=2.0)
    with pytest.raises(ValueError, match="method='paper' has no budget mode"):
        fxquant.explore(model, calib, stats_loader=stats, method="paper")
    with pytest.raises(ValueError, match="unknown explore option"):
        fxquant.explore(model, calib, stats_loader=stats, budget=2)


def test_verbose_is_per_call_and_a_closed_exploration_refuses(caplog):
    model = small_cnn(1)
    x, y, stats = data(model, n=64)
    with fxquant.explore(model, batched(x, y, 32), stats_loader=stats, verbose=False) as ex:
        with caplog.at_level(logging.INFO, logger="fxquant.search"):
            ex.compress(target_bits=3.0, verbose=True)
            loud = len(caplog.records)
            ex.compress(target_bits=3.0)  # back to explore's verbose=False
        assert loud >= 1 and len(caplog.records) == loud
    for call in (lambda: ex.compress(target_bits=3.0), ex.frontier, lambda: ex.sensitivity):
        with pytest.raises(ValueError, match="closed"):
            call()
    ex.close()  # twice is fine
