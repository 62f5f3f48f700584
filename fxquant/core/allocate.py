"""Global bit allocation: minimise the summed per-layer cost under a size budget (no FX, no torch).

Each item (layer) has a few options (bit-widths), each with a cost (measured
sensitivity) and an integer size (``params * bits`` or bytes). :func:`pareto_frontier`
runs a dynamic programme over the items that keeps, after each item, only the
partial allocations no other one beats in both size and cost; the final set is
the exact size/cost Pareto frontier of all allocations. :func:`allocate` picks
the cheapest frontier point whose size is within the budget.

Sizes are integers, so "within the budget" is exact. If the frontier grows past
``max_states`` points it is thinned to the cheapest point per size bucket; the
kept points keep their exact sizes (the budget still holds exactly), but the
optimum is then only approximate (``Frontier.exact`` says which).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["Allocation", "Frontier", "pareto_frontier", "allocate", "InfeasibleBudget"]


class InfeasibleBudget(ValueError):
    """No allocation fits the budget; ``smallest`` is the size of the smallest one."""

    def __init__(self, budget: int, smallest: int):
        super().__init__(f"budget {budget} is below the smallest feasible size {smallest}")
        self.budget, self.smallest = budget, smallest


@dataclass(frozen=True)
class Allocation:
    choice: tuple[int, ...]  # option index per item
    size: int
    cost: float


@dataclass(frozen=True)
class Frontier:
    points: tuple[Allocation, ...]  # ascending size, strictly descending cost
    exact: bool  # False when the dynamic programme had to thin its states

    def best_within(self, budget: int) -> Allocation:
        """The cheapest allocation of size ``<= budget``."""
        fitting = [p for p in self.points if p.size <= budget]
        if not fitting:
            raise InfeasibleBudget(budget, self.points[0].size)
        return fitting[-1]  # the largest fitting point is the cheapest: costs fall along the frontier


def _check(costs: Sequence[Sequence[float]], sizes: Sequence[Sequence[int]]) -> None:
    if len(costs) != len(sizes):
        raise ValueError(f"allocate: {len(costs)} cost rows but {len(sizes)} size rows")
    for i, (c, s) in enumerate(zip(costs, sizes)):
        if not c or len(c) != len(s):
            raise ValueError(f"allocate: item {i} has {len(c)} costs and {len(s)} sizes (need >= 1, equal)")
        if any(not math.isfinite(float(v)) for v in c):
            raise ValueError(f"allocate: item {i} has a non-finite cost {list(c)}")
        if any(isinstance(v, bool) or int(v) != v or v < 0 for v in s):
            raise ValueError(f"allocate: item {i} sizes must be integers >= 0, got {list(s)}")


def _prune(states: list[tuple[int, float, int, int]]) -> list[tuple[int, float, int, int]]:
    """Keep the states no other beats in size and cost; ties keep the first generated (determinism)."""
    states.sort(key=lambda s: (s[0], s[1]))
    out, best = [], math.inf
    for st in states:
        if st[1] < best:
            out.append(st)
            best = st[1]
    return out


def _thin(states: list[tuple[int, float, int, int]], max_states: int) -> list[tuple[int, float, int, int]]:
    """The smallest state and, per size bucket, its cheapest (on a pruned frontier: its last) state."""
    lo, hi = states[0][0], states[-1][0]
    width = (hi - lo) / (max_states - 1)

    def bucket(st) -> int:
        return int((st[0] - lo) / width)

    kept = [states[0]]
    for i, st in enumerate(states):
        if (i + 1 == len(states) or bucket(states[i + 1]) != bucket(st)) and st is not kept[-1]:
            kept.append(st)
    return kept


def pareto_frontier(costs: Sequence[Sequence[float]], sizes: Sequence[Sequence[int]], *,
                    max_states: int = 20000) -> Frontier:
    """The size/cost Pareto frontier of choosing one option per item (see the module docstring)."""
    _check(costs, sizes)
    if max_states < 2:
        raise ValueError(f"allocate: max_states must be >= 2, got {max_states}")
    # state: (size, cost, parent index in the previous stage, option index)
    stages: list[list[tuple[int, float, int, int]]] = []
    states = [(0, 0.0, -1, -1)]
    exact = True
    for c_row, s_row in zip(costs, sizes):
        grown = [(size + int(s), cost + float(c), p, o)
                 for p, (size, cost, _, _) in enumerate(states) for o, (c, s) in enumerate(zip(c_row, s_row))]
        states = _prune(grown)
        if len(states) > max_states:
            states = _thin(states, max_states)
            exact = False
        stages.append(states)
    points = []
    for idx, (size, cost, _, _) in enumerate(states):
        choice, i = [], idx
        for stage in reversed(stages):
            _, _, parent, option = stage[i]
            choice.append(option)
            i = parent
        points.append(Allocation(tuple(reversed(choice)), size, cost))
    return Frontier(tuple(points), exact)


def allocate(costs: Sequence[Sequence[float]], sizes: Sequence[Sequence[int]], budget: int, *,
             max_states: int = 20000) -> Allocation:
    """The allocation of least total cost whose total size is ``<= budget``.

    Raises :class:`InfeasibleBudget` (a ``ValueError``) naming the smallest feasible size.
    """
    return pareto_frontier(costs, sizes, max_states=max_states).best_within(budget)
