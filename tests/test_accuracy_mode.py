"""Accuracy mode's cut along the frontier (passes/accuracy_mode.py): the margin, the rate, the choice."""

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fxquant
from fxquant.passes.accuracy_mode import ANCHOR_FACTOR, ANCHORS, allowed_drop, choose_point, drop_per_kl
from tests.test_search_robust import batched, data, run, small_cnn


def _passes(d: float, t: float, n: int, sigmas: float) -> bool:
    return d + sigmas * 100.0 * math.sqrt(max(1.0, d * n / 100.0)) / n <= t + 1e-12


def test_allowed_drop_worked_example():
    # 2,000 images, t_init 0.5, 2 sigmas: d + 0.4472 sqrt(d) <= 0.5 -> sqrt(d) = 0.5180, d = 0.2683 (5.4 images)
    assert allowed_drop(0.5, 2000, 2.0) == pytest.approx(0.268338, abs=1e-6)
    assert allowed_drop(0.5, None, 2.0) == 0.5  # a user oracle: no binomial error model
    assert allowed_drop(0.05, 2000, 2.0) < 0  # tighter than two images' error: nothing with a drop passes


@given(t=st.floats(0.01, 20.0), n=st.integers(10, 100_000), sigmas=st.floats(0.0, 4.0))
def test_allowed_drop_is_the_largest_passing_drop(t, n, sigmas):
    d = allowed_drop(t, n, sigmas)
    if d >= 0:
        assert _passes(d, t, n, sigmas)
    assert not _passes(d + max(1e-6, 1e-6 * abs(d)), t, n, sigmas)


def test_drop_per_kl_pools_and_clips():
    assert drop_per_kl([(0.02, 1.0), (0.01, 0.5)]) == pytest.approx(1.5 / 0.03)
    assert drop_per_kl([(0.02, 1.0), (0.01, -0.5)]) == pytest.approx(1.0 / 0.03)  # a gain counts as no drop
    assert drop_per_kl([(0.02, -0.1), (0.01, 0.0)]) is None
    assert drop_per_kl([]) is None


class Walk:
    """A synthetic frontier: KL halves every two points; the oracle's drop is ``rate * KL`` plus ``noise[i]``."""

    def __init__(self, n=40, rate=40.0, noise=None, float_value=98.0):
        self.kl = [3.0 * 2.0 ** (-i / 2) for i in range(n)]
        self.rate, self.noise, self.float_value = rate, noise or {}, float_value
        self.calls, self.complete_calls = [], 0

    def value_of(self, i, threshold=None):
        value = self.float_value - min(80.0, self.rate * self.kl[i]) - self.noise.get(i, 0.0)
        self.calls.append(i)
        stopped = threshold is not None and value < threshold
        self.complete_calls += not stopped
        return value, not stopped

    def choose(self, t_init=0.5, total=2000, sigmas=2.0):
        return choose_point(list(range(len(self.kl))), self.value_of, self.kl.__getitem__, self.float_value,
                            t_init, total, sigmas)


def test_cut_is_placed_on_the_kl_at_the_measured_rate():
    walk = Walk()
    chosen, info = walk.choose()
    d_star = allowed_drop(0.5, 2000, 2.0)
    assert info["rate"] == pytest.approx(40.0) and len(info["anchors"]) == ANCHORS
    assert 40.0 * walk.kl[chosen] <= d_star < 40.0 * walk.kl[chosen - 1]
    # The first anchor is the first point within ANCHOR_FACTOR t_init (4 points) of float: tens of images.
    limit = ANCHOR_FACTOR * 0.5
    assert limit / 2 ** 0.5 < info["anchors"][0][1] <= limit
    assert walk.kl.index(info["anchors"][0][0]) == next(i for i, k in enumerate(walk.kl) if 40.0 * k <= limit)


def test_noise_near_the_cut_does_not_move_it():
    """Unlike a top-1 test per point, the cut ignores lucky or unlucky points near it, and noise on the
    anchors moves it by at most one point (the rate is pooled over drops of tens of images)."""
    clean, _ = Walk().choose()
    # the first point within ANCHOR_FACTOR t_init of float
    first = next(i for i, k in enumerate(Walk().kl) if 40.0 * k <= ANCHOR_FACTOR * 0.5)
    assert first + ANCHORS <= clean  # the anchors lie below the cut, apart from it
    for noise in ({clean - 1: -0.4}, {clean - 2: -0.3, clean: 0.2}):
        assert Walk(noise=noise).choose()[0] == clean
    for noise in ({first: 0.2, first + 1: -0.1}, {first + 1: -0.2, first + 2: -0.15}, {first + 2: 0.3}):
        assert abs(Walk(noise=noise).choose()[0] - clean) <= 1, noise


def test_a_point_measurably_worse_than_t_init_is_not_returned():
    clean, _ = Walk().choose()
    walk = Walk(noise={clean: 0.6, clean + 1: 0.6})  # the rate predicts fine, the oracle disagrees
    chosen, _ = walk.choose()
    assert chosen == clean + 2
    assert walk.float_value - walk.value_of(chosen)[0] <= 0.5


def test_an_empty_walk_is_an_error():
    with pytest.raises(ValueError, match="walk"):
        choose_point([], lambda i, t=None: (0.0, True), lambda i: 0.0, 98.0, 0.5, 2000, 2.0)
    with pytest.raises(ValueError, match="n_anchors=0"):
        choose_point([0], lambda i, t=None: (0.0, True), lambda i: 0.0, 98.0, 0.5, 2000, 2.0, n_anchors=0)


def test_no_point_within_reach_takes_the_widest():
    walk = Walk(noise={i: 5.0 for i in range(40)})  # every point loses more than 4 t_init
    chosen, info = walk.choose()
    assert chosen == len(walk.kl) - 1 and info["rate"] is None


def test_accuracy_mode_reports_the_kl_it_cut_on():
    model = small_cnn()
    x, y, stats = data(model, n=128)
    q, res = run(model, batched(x, y, 32), stats, method="sensitivity", t_init=3.0)
    measured = [p for p in res.frontier if p.kl is not None]
    assert len(measured) >= ANCHORS  # the anchors' KL, and the points the cut was searched on
    chosen = [p for p in res.frontier if p.chosen]
    assert len(chosen) == 1 and chosen[0].value is not None and chosen[0].kl is not None
    assert res.float_value - chosen[0].value <= 3.0  # the check: never measurably worse than t_init
    assert fxquant.report(q).frontier == tuple(dataclasses.asdict(p) for p in res.frontier)


def _study_draw(shift: float) -> dict:
    """A recorded draw as accuracy_mode_study.py writes it: drop = 40 * KL (+ shift), KL halving per 0.1 bits."""
    points = []
    for i in range(13):
        kl = 0.03 * 2.0 ** -i
        points.append({"avg_bits": 1.0 + 0.1 * i, "calib": {"top1": 98.0 - 40 * kl - shift, "kl": kl,
                                                             "soft_drop": 100 * kl, "disagree": 60 * kl},
                       "test": {"top1": 96.0 - 40 * kl}})
    return {"float": {"calib": {"top1": 98.0}, "test": {"top1": 96.0}}, "points": points}


def test_rules_replay_on_recorded_draws():
    from benchmarks import accuracy_mode_rules as rules

    assert rules._isotonic_decreasing([3.0, 1.0, 2.0, 0.5]) == [3.0, 1.5, 1.5, 0.5]
    data = {"model": "m", "grid": [1.0, 2.2], "draws": {"5": _study_draw(0.0), "6": _study_draw(0.1)}}
    # The KL rule's cut: 40 * KL <= 0.268 -> KL <= 0.0067 -> the first point with 0.03 * 2^-i below it (i = 3).
    assert [rules.choose("fxquant", d)["index"] for d in data["draws"].values()] == [3, 3]
    text = rules.report(data)
    assert "| `fxquant` | 1.30 / +0.15 | 1.30 / +0.15 | 1.00 | +0.15 |" in text
    assert set(rules.RULES) <= set(ln.split("`")[1] for ln in text.splitlines() if ln.startswith("- `"))


def _walk_draw(rate: float, n: int = 200) -> tuple[dict, dict]:
    """A draw as accuracy_mode_walk.py records it: 13 walk points, KL halving per point, ``rate * KL`` lost."""
    import torch

    fc = torch.ones(n, dtype=torch.bool)
    points, arrays = [], []
    for i in range(13):
        kl = 0.03 * 2.0 ** -i
        lost = round(rate * kl * n / 100)
        cc = torch.arange(n) >= lost
        points.append({"avg_bits": 1.0 + 0.05 * i, "calib_top1": 100.0 * float(cc.double().mean()),
                       "test_top1": 96.0 - rate * kl, "kl_sens": kl * 1.1, "kl_calib": kl})
        arrays.append({"calib_correct": cc, "calib_kl": torch.full((n,), kl), "test_correct": cc})
    return ({"float": {"calib_top1": 100.0, "test_top1": 96.0}, "points": points},
            {"calib_float_correct": fc, "points": arrays})


def test_walk_rules_replay_and_resample():
    from benchmarks import accuracy_mode_rules as rules

    (d5, a5), (d6, a6) = _walk_draw(40.0), _walk_draw(80.0)
    data = {"model": "m", "walk_step": 0.05, "draws": {"5": d5, "6": d6}}
    text = rules.walk_report(data)
    # One row per rule, and the cut follows the rate: at twice the rate the allowed KL is half.
    assert len([ln for ln in text.splitlines() if ln.startswith("| kl ")]) == len(rules.WALK_RULES)
    got = [rules._walk_choose(d["points"], 100.0, "kl_calib", n=200) for d in (d5, d6)]
    assert got[1] > got[0]  # a model that loses more per nat is cut wider
    table = rules.walk_resampled(data, {"5": a5, "6": a6}, replicas=5)
    rows = [ln for ln in table.splitlines() if ln.startswith("| kl ")]
    assert len(rows) == sum(kw.get("kl_key") != "kl_sens" for kw in rules.WALK_RULES.values())
    assert "5 bootstrap resamples" in table and "a set may repeat a draw" in table


@given(n=st.integers(1, 200), draw=st.data())
def test_first_passing_finds_the_first_pass_with_few_tests(n, draw):
    from fxquant.passes.accuracy_mode import first_passing

    cut = draw.draw(st.integers(0, n))  # passes from `cut` on; n = never
    start = draw.draw(st.integers(0, n))
    tested = []

    def passes(p):
        assert start <= p < n
        tested.append(p)
        return p >= cut

    got = first_passing(start, n, passes)
    assert got == (None if cut >= n or start >= n else max(cut, start))
    assert len(tested) <= 2 * math.log2(n + 1) + 2


def test_a_reader_ignores_frontier_keys_it_does_not_know():
    """Files of newer writers may carry more per-point keys (like ``kl`` now); the format promises they are ignored."""
    from fxquant.fileformat.header import _sensitivity_from
    from fxquant.schema import FrontierPoint

    raw = {"average_bits": 1.4, "nbytes": 10, "sensitivity": 0.01, "value": 97.0, "chosen": True, "kl": 0.005,
           "from_the_future": [1, 2]}
    got = _sensitivity_from({"method": "sensitivity", "frontier": [raw]})["frontier"]
    assert got == (FrontierPoint(average_bits=1.4, nbytes=10, sensitivity=0.01, value=97.0, chosen=True, kl=0.005),)
