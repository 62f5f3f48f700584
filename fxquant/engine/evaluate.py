"""Oracle evaluation of a float GraphModule whose layer weights the search changes.

Two ways, giving bit-for-bit the same accuracies:

* naive: every evaluation runs the whole model over the whole calibration set;
* fast: while one layer is searched, nothing upstream of it can change. The
  *frontier* (values computed outside the layer's downstream cone that feed
  into it) is computed once per layer and cached for every batch, and each
  candidate runs only the downstream nodes. Frontier values of layers visited
  later are kept too (up to a memory budget) and stay valid until a decision
  upstream of them, so most layers need no prefix run at all. The samples are
  re-batched once, least confidently correct first, so that the early stop
  below rejects a failing width after its first batch or two. An evaluation also stops as soon as
  the remaining samples could no longer lift the accuracy to the threshold
  (the accept/reject decision is then certain; the accuracy is not needed).

Fast evaluation needs the default :class:`~fxquant.engine.oracle.AccuracyOracle`
(a user oracle is a black box over the whole model), a single-input graph, and
no value written in place before another node reads it (measured once on the
first batch, see :func:`measure_mutations`); otherwise the naive way is used.

Over several processes (``comm``, see :mod:`fxquant.engine.distributed`) every rank
holds all calibration batches and scores its round-robin share of them; counts
are summed over the ranks after every step, so all ranks stop at the same step
and take the same decisions. Hardest-first ordering is global: each rank
computes the margins of its share, the margins are summed into one vector and
every rank re-batches the full set identically *before* taking its share, so
every batch a rank scores is bit for bit a batch a single process would score.
A single process checks the early stop after every batch, N processes after
every N batches: decisions, and every complete value, are the same; the upper
bound reported by a stopped evaluation can be lower (tighter).
"""

from __future__ import annotations

import itertools
import logging

import torch
from torch import fx

from fxquant.engine.distributed import Comm
from fxquant.engine.oracle import AccuracyOracle, check_oracle_value
from fxquant.schema import Layer

__all__ = ["GraphEvaluator", "fast_path_blocker"]

log = logging.getLogger("fxquant.evaluate")

def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


@torch.no_grad()
def measure_mutations(gm: fx.GraphModule, x: torch.Tensor) -> dict[fx.Node, set[fx.Node]]:
    """Which earlier nodes' tensors each node modifies in place, measured on one input.

    Runs ``gm`` node by node and watches every produced tensor's version
    counter. A view shares its base's counter, so a write through a view, an
    ``out=`` argument, ``torch.relu_``, or a leaf module changing its input
    inside its own ``forward`` are all seen, whatever the op is called.
    """
    interp = fx.Interpreter(gm, garbage_collect_values=False)
    env: dict[fx.Node, object] = {}
    versions: dict[fx.Node, list] = {}
    mutations: dict[fx.Node, set[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "output":
            break
        interp.env = env
        env[node] = x.clone() if node.op == "placeholder" else interp.run_node(node)
        for prev, recs in versions.items():
            if any(t._version != v for t, v in recs):
                mutations.setdefault(node, set()).add(prev)
                versions[prev] = [(t, t._version) for t, _ in recs]
        versions[node] = [(t, t._version) for t in _tensors(env[node])]
    return mutations


def fast_path_blocker(gm: fx.GraphModule, oracle, mutations: dict[fx.Node, set[fx.Node]]) -> str | None:
    """Why fast evaluation cannot be used on ``gm`` with ``oracle`` (None if it can).

    An in-place write is harmless to caching when every other reader of the
    written value runs before the writer (ResNet's ``relu(inplace=True)`` and
    ``out += identity``); a reader after the writer would see a different
    value when only part of the graph is re-run.
    """
    if not isinstance(oracle, AccuracyOracle):
        return "a user-supplied oracle is evaluated on the whole model"
    if sum(n.op == "placeholder" for n in gm.graph.nodes) != 1:
        return "the model does not take exactly one input"
    position = {n: i for i, n in enumerate(gm.graph.nodes)}
    for writer, written in mutations.items():
        for value in written:
            late = [u for u in value.users if u is not writer and position[u] > position[writer]]
            if late:
                return f"node {writer.name} modifies {value.name} in place before {late[0].name} reads it"
    return None


class GraphEvaluator:
    """Runs ``oracle`` on ``gm`` and counts oracle calls and layer-forwards.

    A *layer-forward* is one execution, on one batch, of a graph node that
    computes with a layer weight (counted on this rank; see
    :meth:`total_layer_forwards`). ``cache_bytes`` bounds the activations kept
    for layers searched later (fast mode). With ``comm``, this rank scores its
    share of the batches and every evaluation is a collective.
    """

    def __init__(self, gm: fx.GraphModule, oracle, layers: list[Layer], fast: bool = True,
                 cache_bytes: int = 4 << 30, comm: Comm | None = None):
        self.gm, self.oracle, self.comm = gm, oracle, comm
        self._main = comm is None or comm.is_main
        accuracy = isinstance(oracle, AccuracyOracle)
        if comm is not None and accuracy:
            comm.check_batches(oracle.batches)
        elif comm is not None and comm.is_main:
            log.info("fxquant: a user-supplied oracle cannot be sharded; each of the %d processes evaluates "
                     "it on the whole model and rank 0's value decides (no speed-up unless the oracle "
                     "splits its own data)", comm.world_size)
        # The evaluator's own list: reordering it never touches the caller's oracle.
        self._take_share(list(oracle.batches) if accuracy else [])
        self.calls = 0
        self.layer_forwards = 0
        self._uses = {layer.name: self._nodes_using(layer) for layer in layers}
        self._weighted = set().union(*self._uses.values()) if layers else set()
        self._order = list(gm.graph.nodes)
        self._placeholder = next((n for n in self._order if n.op == "placeholder"), None)
        self._mutations: dict[fx.Node, set[fx.Node]] = {}
        if accuracy and self._placeholder is not None:
            # The same batch on every rank: all ranks must choose the same evaluation path.
            self._mutations = measure_mutations(gm, oracle.batches[0][0])
        # A model that writes into its input must not change the calibration data.
        self._clone_input = any(self._placeholder in written for written in self._mutations.values())
        blocker = fast_path_blocker(gm, oracle, self._mutations) if fast else "naive evaluation was requested"
        self.fast = blocker is None
        if fast and blocker and self._main:
            # A user oracle is an expected choice, not a problem worth a warning.
            level = logging.INFO if not accuracy else logging.WARNING
            log.log(level, "fxquant: fast evaluation disabled (%s); using naive evaluation", blocker)
        self._interp = fx.Interpreter(gm, garbage_collect_values=False)
        self._last_use = self._last_uses()
        self.cache_bytes = int(cache_bytes)
        self._geometries: dict[str, tuple[list[fx.Node], set[fx.Node]]] = {}
        self._clone: set[fx.Node] = set()
        self.release()

    # ----- processes ----------------------------------------------------------------------------
    def _take_share(self, batches: list, copy: bool = False) -> None:
        """Keep this rank's round-robin share of ``batches`` (all of them in one process); ``copy``
        so that views into a tensor of all ranks' samples do not keep the others' alive."""
        self._index = list(range(len(batches))) if self.comm is None else self.comm.shard(len(batches))
        self._steps = len(batches) if self.comm is None else self.comm.steps(len(batches))
        self.batches = [(batches[i][0].clone(), batches[i][1].clone()) if copy else batches[i]
                        for i in self._index]

    def total_layer_forwards(self) -> int:
        """Layer-forwards summed over all ranks (a collective with ``comm``: every rank calls it)."""
        return self.comm.sum_ints(self.layer_forwards)[0] if self.comm is not None else self.layer_forwards

    # ----- graph bookkeeping -------------------------------------------------------------------
    def _nodes_using(self, layer: Layer) -> set[fx.Node]:
        paths = {layer.param_path, *layer.tied}
        owners = {p.rpartition(".")[0] for p in paths}
        out = set()
        for node in self.gm.graph.nodes:
            if node.op == "get_attr" and node.target in paths:
                out.update(node.users)
            elif node.op == "call_module" and any(
                    o == node.target or o.startswith(node.target + ".") for o in owners):
                out.add(node)
        return out

    def _last_uses(self) -> dict[fx.Node, list[fx.Node]]:
        last: dict[fx.Node, fx.Node] = {}
        for node in self._order:
            for inp in node.all_input_nodes:
                last[inp] = node
        by_user: dict[fx.Node, list[fx.Node]] = {}
        for value, user in last.items():
            by_user.setdefault(user, []).append(value)
        return by_user

    def _downstream(self, layer: Layer) -> set[fx.Node]:
        starts = set(self._uses[layer.name])
        starts.update(n for n in self.gm.graph.nodes
                      if n.op == "get_attr" and n.target in {layer.param_path, *layer.tied})
        cone, stack = set(), list(starts)
        while stack:
            node = stack.pop()
            if node not in cone:
                cone.add(node)
                stack.extend(node.users)
        return cone

    # ----- running ---------------------------------------------------------------------------
    def _run(self, env: dict, nodes: list[fx.Node], keep=frozenset(), capture=None, snapshot=frozenset()):
        """Run ``nodes`` in order on ``env``; values of ``keep`` survive, those in ``capture``'s
        keys are recorded (cloned when in ``snapshot``: a later node modifies them in place)."""
        interp = self._interp
        interp.env = env
        out = None
        for node in nodes:
            if node.op == "output":
                out = interp.fetch_args_kwargs_from_env(node)[0][0]
                break
            env[node] = interp.run_node(node)
            if node in self._weighted:
                self.layer_forwards += 1
            if capture is not None and node in capture:
                capture[node].append(env[node].clone() if node in snapshot else env[node])
            for dead in self._last_use.get(node, ()):
                if dead not in keep:
                    env.pop(dead, None)
        return out

    @torch.no_grad()
    def evaluate(self, threshold: float | None = None) -> tuple[float, bool]:
        """Oracle value of the whole model: ``(value, complete)``.

        With a threshold and fast evaluation, stops once the threshold is out of
        reach and returns ``complete=False`` (the value is then an upper bound).
        """
        self.calls += 1
        if not isinstance(self.oracle, AccuracyOracle):
            def value():
                return check_oracle_value(self.oracle(self.gm))

            # A black box may see different data on each rank: rank 0's value decides for all.
            return (value() if self.comm is None else self.comm.main_result(value)), True
        if not self.fast:
            def whole(_i, x):
                self.layer_forwards += len(self._weighted)
                return self.gm(x.clone() if self._clone_input else x)

            return self._score(whole, None)
        return self._score(lambda i, x: self._run({self._placeholder: x.clone() if self._clone_input else x},
                                                   self._order[1:]), threshold)

    @torch.no_grad()
    def order_hardest_first(self) -> float | None:
        """Re-batch the calibration samples, least confidently correct first (batch sizes kept).

        Every later evaluation counts the same samples, but a width that costs
        accuracy shows its errors in the first batches and the early stop
        rejects it there. Costs one pass, which also scores the model as it is:
        returns that (complete) value, or None if the samples were not re-batched
        (a user oracle, or batches of different shapes). A model whose output for
        one sample depends on the others in its batch would see different batches
        than the user's (``SearchConfig.hardest_first=False`` keeps them).
        """
        if not isinstance(self.oracle, AccuracyOracle):
            return None
        every = self.oracle.batches  # all ranks' batches, in the user's order
        kinds = {(tuple(x.shape[1:]), x.dtype, x.device) for x, _ in every}
        if len(kinds) > 1:  # samples of different shapes cannot be regrouped; keep the user's batches
            if self._main:
                log.info("fxquant: calibration batches differ in shape/dtype/device; keeping their order")
            return None
        self.calls += 1
        correct = 0
        sizes = [len(y) for _, y in every]
        starts = [0, *itertools.accumulate(sizes)]
        # float64 holds any logits dtype exactly, so the order is the one those logits give.
        margins = torch.zeros(sum(sizes), dtype=torch.float64)
        for i, (x, y) in zip(self._index, self.batches):
            logits = self.gm(x.clone() if self._clone_input else x)
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            correct += self.oracle.correct(logits, y, i)  # also validates the output and the targets
            target = logits.gather(1, y.view(-1, 1)).squeeze(1)
            rival = logits.scatter(1, y.view(-1, 1), float("-inf")).amax(dim=1)
            margins[starts[i]:starts[i] + sizes[i]] = (target - rival).double().cpu()
            self.layer_forwards += len(self._weighted)
        if self.comm is not None:
            margins = self.comm.sum_disjoint(margins)  # each sample's margin comes from one rank only
            correct, = self.comm.sum_ints(correct)
        order = torch.argsort(margins, stable=True)
        xs = torch.cat([x for x, _ in every])[order.to(every[0][0].device)]
        ys = torch.cat([y for _, y in every])[order.to(every[0][1].device)]
        batches = list(zip(xs.split(sizes), ys.split(sizes)))
        self._take_share(batches, copy=self.comm is not None)
        self.release()
        return self.oracle.accuracy(correct)

    def _score(self, forward, threshold):
        """Accuracy over all ranks' batches; ``forward(i, x)`` gives the logits of local batch ``i``."""
        correct = seen = 0
        for step in range(self._steps):
            got = count = 0
            if step < len(self.batches):  # a rank past its last batch still joins the sums
                x, y = self.batches[step]
                got, count = self.oracle.correct(forward(step, x), y, self._index[step]), y.numel()
            if self.comm is not None and threshold is not None:
                got, count = self.comm.sum_ints(got, count)  # global counts: every rank stops here alike
            correct, seen = correct + got, seen + count
            if threshold is not None and not self.oracle.can_still_reach(correct, seen, threshold):
                return self.oracle.accuracy(correct + self.oracle.total - seen), False
        if self.comm is not None and threshold is None:
            correct, = self.comm.sum_ints(correct)
        return self.oracle.accuracy(correct), True

    # ----- frontier caching (fast mode) ----------------------------------------------------------
    def _geometry(self, layer: Layer) -> tuple[list[fx.Node], set[fx.Node]]:
        """(downstream cone in graph order, frontier) of ``layer``."""
        if layer.name not in self._geometries:
            # The output node always runs: a layer on a branch that never reaches the
            # output still needs the output's other inputs from the frontier.
            cone = self._downstream(layer) | {self._order[-1]}
            frontier = {inp for n in cone for inp in n.all_input_nodes if inp not in cone}
            self._geometries[layer.name] = ([n for n in self._order if n in cone], frontier)
        return self._geometries[layer.name]

    def plan(self, order: list[Layer]) -> None:
        """Announce the visiting order, so frontier values wanted later can be kept (fast mode)."""
        self._pending = {layer.name: layer for layer in order}

    def _wanted(self) -> set[fx.Node]:
        return set().union(*(self._geometry(lay)[1] for lay in self._pending.values()))

    def _required(self, targets: set[fx.Node]) -> list[fx.Node]:
        """Nodes to run (graph order) so that ``targets`` get values, reusing stored ones."""
        need, stack = set(), list(targets)
        while stack:
            node = stack.pop()
            if node in need or node in self._store:
                continue
            need.add(node)
            stack.extend(node.all_input_nodes)
        return [n for n in self._order if n in need]

    def _store_value(self, node: fx.Node, values: list) -> None:
        size = sum(t.numel() * t.element_size() for v in values for t in _tensors(v))
        if self._store_bytes + size <= self.cache_bytes:
            self._store[node] = values
            self._store_bytes += size
            self._store_sizes[node] = size

    def _drop(self, node: fx.Node) -> None:
        self._store.pop(node, None)
        self._store_bytes -= self._store_sizes.pop(node, 0)

    @torch.no_grad()
    def focus(self, layer: Layer) -> None:
        """Cache the frontier of ``layer`` under the current weights (fast mode; no-op otherwise).

        Frontier values of layers still to come are kept (within ``cache_bytes``)
        and reused until a decision upstream of them invalidates them.
        """
        if not self.fast:
            return
        self._cone, frontier = self._geometry(layer)
        cone = set(self._cone)
        # A downstream op that modifies a cached value in place gets a fresh copy each run.
        self._clone = {v for n in self._cone for v in self._mutations.get(n, ()) if v in frontier}
        missing = frontier - set(self._store)
        if missing:
            required = self._required(missing)
            seeds = {i for n in required for i in n.all_input_nodes if i in self._store}
            mutated = {v for n in required for v in self._mutations.get(n, ())}
            wanted = (self._wanted() | frontier) - set(self._store) - cone
            captured = {n: [] for n in required if n in wanted}
            for b, (x, _) in enumerate(self.batches):
                env = {self._placeholder: x}
                env.update({n: (self._store[n][b].clone() if n in mutated else self._store[n][b])
                            for n in seeds})
                self._run(env, required, keep=set(captured), capture=captured, snapshot=mutated)
            for node, values in captured.items():
                self._store_value(node, values)
            # The current frontier is needed now even if the budget refused to keep it.
            self._frontier_values = {n: self._store[n] if n in self._store else captured[n] for n in frontier}
        else:
            self._frontier_values = {n: self._store[n] for n in frontier}

    def commit(self, layer: Layer) -> None:
        """``layer``'s width is decided: forget stored values it changed or no one needs."""
        if not self.fast:
            return
        self._pending.pop(layer.name, None)
        changed = set(self._geometry(layer)[0])
        wanted = self._wanted()
        for node in list(self._store):
            if node.op != "placeholder" and (node in changed or node not in wanted):
                self._drop(node)
        self._frontier_values = {}

    @torch.no_grad()
    def evaluate_focused(self, threshold: float | None = None) -> tuple[float, bool]:
        """Like :meth:`evaluate` after only the focused layer changed (fast mode re-runs its cone)."""
        if not self.fast:
            return self.evaluate(threshold)
        self.calls += 1

        def forward(i, _x):
            env = {n: (v[i].clone() if n in self._clone else v[i]) for n, v in self._frontier_values.items()}
            return self._run(env, self._cone)

        return self._score(forward, threshold)

    @torch.no_grad()
    def outputs_focused(self) -> list:
        """The model's outputs, one per local batch, after only the focused layer changed.

        Fast mode re-runs the focused layer's downstream cone from the cached
        frontier; naive mode runs the whole model. Not an oracle call.
        """
        if not self.fast:
            self.layer_forwards += len(self._weighted) * len(self.batches)
            return [self.gm(x.clone() if self._clone_input else x) for x, _ in self.batches]
        return [self._run({n: (v[i].clone() if n in self._clone else v[i])
                           for n, v in self._frontier_values.items()}, self._cone)
                for i in range(len(self.batches))]

    def visited(self, layer: Layer) -> None:
        """``layer`` is back at the weights it had when focused: keep every stored value still wanted."""
        if not self.fast:
            return
        self._pending.pop(layer.name, None)
        wanted = self._wanted()
        for node in list(self._store):
            if node.op != "placeholder" and node not in wanted:
                self._drop(node)
        self._frontier_values = {}

    def release(self) -> None:
        self._store, self._store_sizes, self._store_bytes = {}, {}, 0
        if self.fast:  # the inputs are already in memory: always "stored", never dropped
            self._store[self._placeholder] = [x for x, _ in self.batches]
        self._frontier_values, self._cone, self._pending = {}, [], {}
