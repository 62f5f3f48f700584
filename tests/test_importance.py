"""Eqs. 1-3 and 5 on a hand-computed example; the annotation pass and its networkx export."""

import math
from dataclasses import FrozenInstanceError

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fxquant import passes
from fxquant.core.importance import average_bits, importance_scores, normalized_params, normalized_variance
from fxquant.schema import META_KEY, NodeAnnotation
from tests import strategies


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 2, bias=False)  # 4 weights, values +-1: variance 1
        self.b = nn.Linear(2, 4, bias=False)  # 8 weights, values +-2: variance 4
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
            self.b.weight.copy_(torch.tensor([[2.0, -2.0]] * 4))

    def forward(self, x):
        return self.b(self.a(x))


# By hand: total = 12 -> N_P = 1/3, 2/3; max variance 4 -> N_V(a) = ln(e - 1 + 1/4) = ln 1.968282 = 0.677161,
# N_V(b) = ln(e) = 1; Importance = 0.5 * N_P + 0.5 * (1 - N_V):
HAND = {"a": (1 / 3, 0.677161, 0.328086), "b": (2 / 3, 1.0, 1 / 3)}


def test_equations_on_a_hand_computed_example():
    n_p, n_v, imp = importance_scores([4, 8], [1.0, 4.0])
    for got, (p, v, i) in zip(zip(n_p, n_v, imp), HAND.values()):
        assert got == pytest.approx((p, v, i), abs=1e-6)
    assert average_bits([4, 8], [8, 2]) == pytest.approx(8 / 3 + 4 / 3)


def test_importance_weights_and_bad_input():
    _, _, imp = importance_scores([4, 8], [1.0, 4.0], w_p=1.0, w_v=0.0)
    assert imp == pytest.approx([1 / 3, 2 / 3])
    with pytest.raises(ValueError, match="w_v"):
        importance_scores([1], [1.0], w_v=-1)
    with pytest.raises(ValueError, match="variances"):
        importance_scores([1], [float("nan")])
    n_p, n_v, _ = importance_scores([3, 5], [0.0, 0.0])  # all-zero weights: no NaN
    assert n_v == pytest.approx([math.log(math.e - 1)] * 2)


def test_annotation_pass_stores_one_frozen_dataclass_per_layer_node():
    gm = passes.trace(TwoLayers())
    infos = passes.annotate_importance(gm)
    assert [i.name for i in infos] == ["a", "b"]
    for info, (p, v, i) in zip(infos, HAND.values()):
        assert (info.n_p, info.n_v, info.importance) == pytest.approx((p, v, i), abs=1e-6)
    annotated = {n.target: n.meta[META_KEY] for n in gm.graph.nodes if META_KEY in n.meta}
    assert set(annotated) == {"a", "b"}
    assert all(isinstance(a, NodeAnnotation) for a in annotated.values())
    with pytest.raises(FrozenInstanceError):
        annotated["a"].layers[0].bits = 3
    assert passes.layer_infos(gm) == infos


def test_to_networkx_carries_the_annotations():
    gm = passes.trace(TwoLayers())
    passes.annotate_importance(gm)
    passes.rewrite(gm, {"a": 3})
    g = passes.to_networkx(gm)
    assert list(g.nodes) == [n.name for n in gm.graph.nodes]
    assert g.has_edge("a", "b") and g.nodes["x"]["is_layer"] is False
    assert g.nodes["a"]["bits"] == 3 and g.nodes["b"]["bits"] is None
    assert g.nodes["b"]["importance"] == pytest.approx(1 / 3)
    assert g.nodes["a"]["layers"][0]["n_p"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- properties of eqs. 1-3


def _scores(ws):
    """Eqs. 1-3 for weights, with the variance the annotation pass takes (population, float64)."""
    return importance_scores([w.numel() for w in ws], [float(w.double().var(unbiased=False)) for w in ws])[2]


@given(st.lists(st.integers(1, 10**8), min_size=1, max_size=40))
def test_eq1_normalised_sizes_sum_to_one(params):
    n_p = normalized_params(params)
    assert math.fsum(n_p) == pytest.approx(1.0, abs=1e-12)
    assert all(0 < p <= 1 for p in n_p)


@given(st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=40))
def test_eq2_normalised_variance_within_its_range(variances):
    for n_v in normalized_variance(variances):
        assert math.log(math.e - 1) - 1e-12 <= n_v <= 1 + 1e-12
    top = max(variances)
    if top > 0:  # the layer of largest variance gets exactly 1
        assert normalized_variance(variances)[variances.index(top)] == pytest.approx(1.0)


@given(st.lists(strategies.conv_weights(), min_size=1, max_size=5), st.floats(1e-3, 1e3))
def test_eq3_importance_order_invariant_under_rescaling_all_weights(ws, c):
    """Scaling every weight by c > 0 scales every variance by c**2: N_V, hence importance, unchanged."""
    before, after = _scores(ws), _scores([c * w for w in ws])
    assert after == pytest.approx(before, rel=1e-6, abs=1e-9)
    for a in range(len(before)):
        for b in range(len(before)):
            if before[a] < before[b] - 1e-6:  # a strict order (beyond float noise) is kept
                assert after[a] < after[b]
