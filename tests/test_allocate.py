"""The global bit allocator (fxquant.core.allocate): optimal against brute force, exact budgets."""

import itertools
import math

import pytest
from hypothesis import given

from fxquant.core.allocate import InfeasibleBudget, allocate, pareto_frontier
from tests.strategies import knapsack_instances


def brute_force(costs, sizes, budget):
    best = None
    for choice in itertools.product(*(range(len(c)) for c in costs)):
        size = sum(s[o] for s, o in zip(sizes, choice))
        cost = sum(c[o] for c, o in zip(costs, choice))
        if size <= budget and (best is None or cost < best):
            best = cost
    return best


@given(knapsack_instances())
def test_allocate_matches_brute_force(instance):
    costs, sizes, budget = instance
    best = brute_force(costs, sizes, budget)
    if best is None:
        with pytest.raises(InfeasibleBudget) as info:
            allocate(costs, sizes, budget)
        assert info.value.smallest == sum(min(s) for s in sizes)
        return
    got = allocate(costs, sizes, budget)
    assert got.size <= budget
    assert got.size == sum(s[o] for s, o in zip(sizes, got.choice))
    assert math.isclose(got.cost, sum(c[o] for c, o in zip(costs, got.choice)), abs_tol=1e-9)
    assert math.isclose(got.cost, best, rel_tol=1e-9, abs_tol=1e-9)


@given(knapsack_instances())
def test_frontier_is_sorted_and_undominated(instance):
    costs, sizes, _ = instance
    front = pareto_frontier(costs, sizes)
    assert front.exact
    pts = front.points
    assert all(a.size < b.size and a.cost > b.cost for a, b in zip(pts, pts[1:]))
    every = [(sum(s[o] for s, o in zip(sizes, ch)), sum(c[o] for c, o in zip(costs, ch)))
             for ch in itertools.product(*(range(len(c)) for c in costs))]
    for size, cost in every:  # no allocation beats a frontier point on both axes
        assert not any(size <= p.size and cost < p.cost - 1e-9 for p in pts)


def test_thinned_frontier_keeps_the_budget_exact():
    costs = [[float(8 - b) ** 2 * (i + 1) for b in range(1, 9)] for i in range(12)]
    sizes = [[(97 + 13 * i) * b for b in range(1, 9)] for i in range(12)]
    front = pareto_frontier(costs, sizes, max_states=50)
    assert not front.exact
    assert len(front.points) <= 51
    budget = sum(s[3] for s in sizes) + 7
    got = front.best_within(budget)
    assert got.size <= budget
    assert got.size == sum(s[o] for s, o in zip(sizes, got.choice))
    assert front.points[0].size == sum(s[0] for s in sizes)  # the smallest allocation survives thinning


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="item 0"):
        allocate([[1.0, 2.0]], [[1]], 5)
    with pytest.raises(ValueError, match="non-finite"):
        allocate([[float("nan")]], [[1]], 5)
    with pytest.raises(ValueError, match="integers"):
        allocate([[1.0]], [[1.5]], 5)
