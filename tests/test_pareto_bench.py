"""benchmarks/pareto.py on a tiny model and synthetic draws: rows stored as computed, resumable,
verdicts and report computed from the JSON alone."""

import json
import statistics

import pytest
import torch
from torch import nn

import fxquant
from benchmarks import baselines, pareto, pareto_report
from tests.test_search_robust import batched, data, small_cnn


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("pareto")
    model = small_cnn()
    draws = {}
    for d in (0, 1):
        x, y, stats = data(model, n=96, seed=10 + d)
        draws[d] = (batched(x, y, 32), stats)
    xt, yt, _ = data(model, n=64, seed=99)
    test = fxquant.AccuracyOracle(batched(xt, yt, 32))
    logged = []
    path = out / "pareto.json"
    pareto.run("tiny", model, draws, test, methods=pareto.METHODS, budgets=(2.0, 3.0), path=path,
               setup={"n_test": 64, "n_calib": 96, "n_stats": 128, "limit": 96}, log=logged.append)
    return out, path, model, draws, test, logged


def test_every_row_is_stored(bench):
    _, path, *_ , logged = bench
    rows = json.loads(path.read_text())["models"]["tiny"]["rows"]
    assert len(rows) == len(pareto.plan(pareto.METHODS, (2.0, 3.0), [0, 1])) == len(logged)
    for key, row in rows.items():
        if "/b" in key:
            assert row["avg_bits"] <= row["budget"] + 1e-12, key  # every budgeted method keeps its budget
        assert 0 <= row["test_acc"] <= 100 and row["search_seconds"] >= 0
    assert rows["uniform/w3/draw1"]["avg_bits"] == pytest.approx(3.0)


def test_a_rerun_resumes(bench):
    _, path, model, draws, test, _ = bench
    logged = []
    pareto.run("tiny", model, draws, test, methods=pareto.METHODS, budgets=(2.0, 3.0), path=path,
               setup={"n_test": 64, "n_calib": 96, "n_stats": 128, "limit": 96}, log=logged.append)
    assert logged == []
    with pytest.raises(SystemExit, match="different setup"):
        pareto.run("tiny", model, draws, test, methods=("uniform",), budgets=(2.0,), path=path,
                   setup={"n_test": 1}, log=logged.append)


def test_superseded_rows_are_kept_beside_the_recomputed_ones():
    data = {"models": {"tiny": {"setup": {"n_test": 64}, "float_test_acc": 90.0, "rows": {
        "fxquant_accuracy/acc/draw0": {"test_acc": 89.0}, "fxquant_accuracy/acc/draw1": {"test_acc": 88.0},
        "uniform/w2/draw0": {"test_acc": 80.0}}}}}
    assert pareto.supersede(data, "tiny", ["fxquant_accuracy/*"], "old rule", "before the change") == 2
    assert list(data["models"]["tiny"]["rows"]) == ["uniform/w2/draw0"]  # rerun recomputes the moved ones
    old = data["models"]["tiny [old rule]"]
    assert set(old["rows"]) == {"fxquant_accuracy/acc/draw0", "fxquant_accuracy/acc/draw1"}
    assert old["note"] == "before the change" and old["setup"] == {"n_test": 64} and old["float_test_acc"] == 90.0
    assert pareto.supersede(data, "tiny", ["fxquant_accuracy/*"], "old rule", None) == 0  # nothing left to move
    assert pareto.supersede(data, "absent", ["*"], "x", None) == 0
    # Run again (say, to resume the recomputation): the kept rows are never replaced.
    data["models"]["tiny"]["rows"]["fxquant_accuracy/acc/draw0"] = {"test_acc": 89.5}
    with pytest.raises(SystemExit, match="already holds fxquant_accuracy/acc/draw0"):
        pareto.supersede(data, "tiny", ["fxquant_accuracy/*"], "old rule", None)
    assert data["models"]["tiny [old rule]"]["rows"]["fxquant_accuracy/acc/draw0"] == {"test_acc": 89.0}
    data["models"]["tiny"]["setup"] = {"n_test": 1}
    with pytest.raises(SystemExit, match="another setup"):
        pareto.supersede(data, "tiny", ["fxquant_accuracy/*"], "old rule", None)


def test_report_and_verdicts(bench):
    out, path, *_ = bench
    text = pareto_report.write_report(path, out)
    assert "| fxquant budget mode (target_bits) | b2 |" in text and "Targets:" in text
    assert (out / "img" / "pareto.png").stat().st_size > 0
    entry = json.loads(path.read_text())["models"]["tiny"]
    checks = pareto_report.verdicts(entry)
    assert len(checks) == 7
    for c in checks:  # 1.5 bits was not run here: not measured, never a pass
        assert c["ok"] is None if "1.5" in c["target"] else c["ok"] in (True, False), c
    # The verdicts are the stored rows' numbers: the 2-bit drop and the accuracy-mode spread, recomputed.
    rows = entry["rows"]
    drop = entry["float_test_acc"] - statistics.median(rows[f"fxquant_budget/b2/draw{d}"]["test_acc"] for d in (0, 1))
    two = next(c for c in checks if c["target"].startswith("target_bits=2:"))
    assert two["value"] == f"{drop:.2f}" and two["ok"] == (drop <= 0.3)
    bits = [rows[f"fxquant_accuracy/acc/draw{d}"]["avg_bits"] for d in (0, 1)]
    spread = next(c for c in checks if "spread" in c["target"])
    ratio = max(bits) / min(bits)
    assert spread["value"].startswith(f"{ratio:.3f}") and spread["ok"] == (ratio <= 1.15)


def test_verdicts_follow_the_numbers():
    rows = {f"uniform/w{b}/draw0": {"test_acc": 90 + b, "avg_bits": b, "search_seconds": 0} for b in (1, 2, 3, 4, 8)}
    rows.update({"fxquant_budget/b2/draw0": {"test_acc": 97.8, "avg_bits": 2.0, "search_seconds": 50},
                 "fxquant_budget/b1.5/draw0": {"test_acc": 96.0, "avg_bits": 1.5, "search_seconds": 50},
                 "hawq/b2/draw0": {"test_acc": 98.5, "avg_bits": 2.0, "search_seconds": 5},
                 "fxquant_accuracy/acc/draw0": {"test_acc": 97.5, "avg_bits": 2.5, "search_seconds": 60},
                 "fxquant_accuracy/acc/draw1": {"test_acc": 93.0, "avg_bits": 3.0, "search_seconds": 60}})
    checks = pareto_report.verdicts({"float_test_acc": 98.0, "rows": rows})

    def ok(words):
        return next(c["ok"] for c in checks if words in c["target"])

    assert ok("target_bits=2:") is True and ok("target_bits=1.5:") is False
    assert ok("spread") is False  # 3.0 / 2.5 = 1.2 > 1.15
    assert ok("accuracy mode: median test drop") is False  # median drop 2.75
    assert ok("never below the uniform line") is True  # 93.0 at 3 bits is on the line, not below
    assert ok("every baseline") is False  # HAWQ beats it at 2 bits
    with_n = pareto_report.verdicts({"float_test_acc": 98.0, "rows": rows, "setup": {"n_test": 1000}})
    lost = next(c for c in with_n if "every baseline" in c["target"])
    assert "hawq at 2 bits (+0.70 = 7 of 1000 test images; by draw: fxquant ahead 0, level 0, behind 1)" \
        in lost["value"], lost
    rows["hawq/b2/draw1"] = {"test_acc": 97.8, "avg_bits": 2.0, "search_seconds": 5}  # median of 2: half an image
    rows["fxquant_budget/b2/draw1"] = rows["fxquant_budget/b2/draw0"]
    half = pareto_report.verdicts({"float_test_acc": 98.0, "rows": rows, "setup": {"n_test": 1000}})
    assert "(+0.35 = 3.5 of 1000 test images; by draw: fxquant ahead 0, level 1, behind 1)" \
        in next(c for c in half if "every baseline" in c["target"])["value"]
    far = {k: v for k, v in rows.items() if not k.startswith("uniform/w8")}
    far["fxquant_accuracy/acc/draw0"] = {"test_acc": 97.5, "avg_bits": 5.0, "search_seconds": 60}
    far["fxquant_accuracy/acc/draw1"] = {"test_acc": 97.5, "avg_bits": 6.0, "search_seconds": 60}
    line = next(c for c in pareto_report.verdicts({"float_test_acc": 98.0, "rows": far})
                if "uniform line" in c["target"])
    assert line["ok"] is None and "2 outside the measured widths" in line["value"]  # nothing compared: no pass


def test_the_default_is_compared_on_common_draws():
    rows = {"fxquant_accuracy/acc/draw0": {"draw": 0, "avg_bits": 1.4, "test_acc": 96.4, "search_seconds": 180},
            "fxquant_accuracy/acc/draw1": {"draw": 1, "avg_bits": 1.3, "test_acc": 96.3, "search_seconds": 190},
            "paper_adaptive/acc/draw1": {"draw": 1, "avg_bits": 2.0, "test_acc": 96.6, "search_seconds": 160}}
    text = pareto_report.default_comparison({"rows": rows})
    assert text.startswith("accuracy mode vs the paper's adaptive search on draws 1: median bits 1.30 vs 2.00")
    assert "bits max/min 1.00 vs 1.00" in text and "96.30 vs 96.60" in text and "190 vs 160 s" in text
    del rows["paper_adaptive/acc/draw1"]
    assert pareto_report.default_comparison({"rows": rows}) is None


def test_an_incomplete_run_names_only_what_is_missing():
    rows = {f"uniform/w{b}/draw{d}": {"test_acc": 90 + b, "avg_bits": b, "search_seconds": 0}
            for b in (2, 4) for d in (0, 1)}
    setup = {"n_test": 100, "n_calib": 10, "n_stats": 10}
    text = pareto_report.markdown({"models": {"m": {"float_test_acc": 98.0, "rows": rows, "setup": setup}}})
    line = next(ln for ln in text.splitlines() if ln.startswith("**Incomplete run**"))
    assert "fewer than" not in line and "not run: HAWQ-v2-style" in line  # every row has both draws
    del rows["uniform/w4/draw1"]
    text = pareto_report.markdown({"models": {"m": {"float_test_acc": 98.0, "rows": rows, "setup": setup}}})
    assert "fewer than 2 draws for uniform widths w4; not run:" in text
    kept = pareto_report.markdown({"models": {"m [old]": {"float_test_acc": 98.0, "rows": rows, "setup": setup}}})
    assert "Incomplete run" not in kept and "Targets:" not in kept  # a kept entry is a comparison, not a run
    assert "judged on" not in kept  # there is no entry m to judge
    both = pareto_report.markdown({"models": {"m": {"float_test_acc": 98.0, "rows": rows, "setup": setup},
                                              "m [old]": {"float_test_acc": 98.0, "rows": rows, "setup": setup}}})
    assert "judged on the current entry (m)" in both
    assert "img/pareto.png" not in pareto_report.markdown({"models": {}}, figure_drawn=False)


def test_the_figure_draws_current_entries_around_the_frontier():
    rows = {f"uniform/w{b}/draw0": {"test_acc": a, "avg_bits": b, "search_seconds": 0}
            for b, a in ((1, 12.0), (2, 95.7), (3, 96.4), (4, 96.6), (8, 96.6))}
    data = {"models": {"m": {"rows": rows}, "m [old rule]": {"rows": dict(rows)},
                       "short": {"rows": dict(list(rows.items())[:2])}}}
    assert pareto_report.plotted_models(data) == ["m"]  # superseded and one-point entries stay in the tables
    (x0, x1), (y0, y1) = pareto_report.axis_limits(pareto_report.summarise({"rows": rows}), 96.59)
    assert x0 == 1.0 and x1 == pytest.approx(4.3)
    assert y0 < 95.7 and y1 > 96.6  # every median from 2 to 4 bits is inside
    assert y0 > 96.59 - 1.5 - 0.2  # the 1-bit cliff (12%) is not
    rows["uniform/w2/draw0"]["test_acc"] = 90.0  # a deep point clips at 1.5 points under float
    (_, _), (y0, _) = pareto_report.axis_limits(pareto_report.summarise({"rows": rows}), 96.59)
    assert 96.59 - 1.5 - 0.2 < y0 < 96.59 - 1.5


def test_hawq_prefers_bits_where_the_curvature_is():
    model = small_cnn()
    x, y, stats = data(model, n=64)
    prep = baselines.prepare(model, stats)
    sens, _ = baselines.hawq_sensitivity(prep, batched(x, y, 32), probes=1)
    for name, per_bits in sens.items():
        assert per_bits[1] >= per_bits[4] >= per_bits[8] >= 0, name  # error shrinks with width
    bits = baselines.knapsack_bits(prep, sens, 3.0)
    total = sum(lay.params for lay in prep.layers)
    assert sum(lay.params * bits[lay.name] for lay in prep.layers) <= 3.0 * total
    assert all(not p.requires_grad or p.grad is None for p in prep.gm.parameters())


def test_hawq_sensitivity_is_the_mean_hessian_diagonal_times_the_squared_error():
    # One linear layer under cross-entropy: the exact Hessian is small enough to build, so
    # Hutchinson's estimate (many probes) must land near its trace.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 3, 2, 2, generator=g), torch.randint(0, 3, (64,), generator=g)
    prep = baselines.prepare(model, [x])
    sens, _ = baselines.hawq_sensitivity(prep, batched(x, y, 32), probes=2000)
    lin = model[1]
    hessian = torch.autograd.functional.hessian(
        lambda w: nn.functional.cross_entropy(nn.functional.linear(x.flatten(1), w, lin.bias.detach()), y),
        lin.weight.detach().clone())
    mean_diag = float(hessian.reshape(36, 36).diagonal().mean())
    (layer,) = prep.layers
    w = baselines.weight_of(prep.gm, layer).detach()
    for b in (1, 2, 4, 8):
        err = float(((prep.quantizer.quantized(layer, b)[0].dequantize() - w) ** 2).sum())
        assert sens[layer.name][b] == pytest.approx(mean_diag * err, rel=0.1), b


def test_search_time_verdicts_judge_the_default_not_budget_mode():
    rows = {"fxquant_accuracy/acc/draw0": {"test_acc": 97.0, "avg_bits": 1.5, "search_seconds": 120},
            "fxquant_budget/b2/draw0": {"test_acc": 97.0, "avg_bits": 2.0, "search_seconds": 10},
            "paper_adaptive/acc/draw0": {"test_acc": 97.0, "avg_bits": 2.0, "search_seconds": 110}}
    entry = {"float_test_acc": 98.0, "rows": rows}
    checks = {c["target"]: c for c in pareto_report.verdicts(entry, "resnet18")}
    versus = next(c for t, c in checks.items() if "no slower than today's search" in t)
    absolute = next(c for t, c in checks.items() if "~100 s" in t)
    assert versus["ok"] is False and "120 s vs 110 s" in versus["value"]  # the fast budget rows do not count
    assert absolute["ok"] is False and "budget mode median 10 s" in absolute["value"]
    rows["fxquant_accuracy/acc/draw0"]["search_seconds"] = 90
    checks = pareto_report.verdicts(entry, "resnet18")
    assert all(c["ok"] for c in checks if "search time" in c["target"])
    assert not any("~100 s" in c["target"] for c in pareto_report.verdicts(entry, "resnet50"))
