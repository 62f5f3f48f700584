"""Fold-weights pass: weights computed from parameters only become one plain parameter.

Some models compute a conv/linear weight in ``forward`` from parameters alone:
weight standardisation (timm's ``StdConv2d``/``ScaledStdConv2d``, the NF-Net
and BiT pattern), ``g * v / v.norm()`` fed to ``F.linear``, a gain times a
weight, ... In the traced graph this is a subgraph whose inputs are all
``get_attr`` reads and whose result feeds a convolution or matrix product.
:func:`fold_weights` evaluates each such subgraph once and replaces it by a
``get_attr`` of a new parameter holding the result, so the layer finder sees
an ordinary weight and the quantizer quantizes its effective value. In eval
mode the model computes the same outputs (the folded value is what every
forward would recompute).

Parameters that only fed folded subgraphs are removed (they would otherwise
stay in the ``state_dict`` as dead float tensors); buffers are kept.
"""

from __future__ import annotations

import logging

import torch
from torch import fx, nn

from fxquant.passes.layers import consumes_weight, is_view

__all__ = ["fold_weights"]

log = logging.getLogger("fxquant.fold")

# Ops whose result is not a function of their inputs alone, or that write to them.
_IMPURE_WORDS = ("dropout", "rand", "normal", "bernoulli", "multinomial", "uniform", "exponential")


def _get_attr(gm: nn.Module, target: str):
    module_path, _, attr = target.rpartition(".")
    owner = gm.get_submodule(module_path) if module_path else gm
    return owner, attr, getattr(owner, attr)


def _is_pure(node: fx.Node) -> bool:
    if node.op not in ("call_function", "call_method"):
        return False
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    name = str(name).lower()
    if node.op == "call_method" and name.endswith("_") and not name.endswith("__"):
        return False  # in-place method
    if node.kwargs.get("inplace") is True:
        return False
    return not any(word in name for word in _IMPURE_WORDS)


def _constant_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value depends on the module's tensors only (no input, no randomness)."""
    const: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            if isinstance(_get_attr(gm, node.target)[2], torch.Tensor):
                const.add(node)
        elif _is_pure(node):
            inputs = node.all_input_nodes
            if inputs and all(n in const for n in inputs):
                const.add(node)
    return const


def _subgraph(root: fx.Node, const: set[fx.Node]) -> list[fx.Node]:
    """``root`` and its constant ancestors, in graph order."""
    seen, stack = {root}, [root]
    while stack:
        for n in stack.pop().all_input_nodes:
            if n in const and n not in seen:
                seen.add(n)
                stack.append(n)
    return [n for n in root.graph.nodes if n in seen]


def _evaluate(gm: fx.GraphModule, nodes: list[fx.Node]) -> torch.Tensor:
    env: dict[fx.Node, object] = {}
    for node in nodes:
        if node.op == "get_attr":
            env[node] = _get_attr(gm, node.target)[2]
            continue
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        if node.op == "call_method":
            env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            env[node] = node.target(*args, **kwargs)
    return env[nodes[-1]]


def _fold_roots(gm: fx.GraphModule, const: set[fx.Node]) -> list[fx.Node]:
    """The last real op of each constant computation whose value feeds a weight consumer.

    Trailing view-like ops (``.t()``, ``reshape``) stay in the graph: the layer
    finder sees through them, and the folded tensor keeps the orientation the
    model computed it in (output channels first for the per-channel grid).
    """
    roots: dict[fx.Node, None] = {}
    for node in gm.graph.nodes:
        if node not in const or node.op == "get_attr":
            continue
        if any(user not in const and consumes_weight(user, node) for user in node.users):
            root = node
            while is_view(root) and isinstance(root.args[0], fx.Node) and root.args[0] in const:
                root = root.args[0]
            if root.op != "get_attr":
                roots[root] = None
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    return sorted(roots, key=index.__getitem__)


def _unique_attr(owner: nn.Module, base: str) -> str:
    attr, i = f"{base}_folded", 1
    while hasattr(owner, attr):
        i += 1
        attr = f"{base}_folded{i}"
    return attr


def _plan(gm: fx.GraphModule, root: fx.Node, const: set[fx.Node]):
    """``(nodes, value, anchor get_attr node)`` for folding ``root``, or None when it is no weight."""
    nodes = _subgraph(root, const)
    try:
        with torch.no_grad():
            value = _evaluate(gm, nodes)
    except Exception as e:  # noqa: BLE001 - a subgraph that cannot run alone stays as it is
        log.warning("fxquant: cannot fold the weight computed at node %s (%s: %s); it stays float",
                    root.name, type(e).__name__, e)
        return None
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return None
    params = [n for n in nodes if n.op == "get_attr" and isinstance(_get_attr(gm, n.target)[2], nn.Parameter)]
    if not params:
        return None  # buffers only: a constant, not a weight
    anchor = max(params, key=lambda n: (_get_attr(gm, n.target)[2].numel() == value.numel(),
                                        _get_attr(gm, n.target)[2].numel()))
    return nodes, value, anchor


def _closed(gm: fx.GraphModule, nodes: list[fx.Node], root: fx.Node, target: str) -> bool:
    """Whether ``target`` is read only inside ``nodes``, and those nodes feed nothing but ``root``."""
    inside = set(nodes)
    readers = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target == target]
    if any(n not in inside for n in readers):
        return False
    return all(user in inside for n in nodes if n is not root for user in n.users)


def fold_weights(gm: fx.GraphModule) -> list[str]:
    """Fold parameter-only weight computations of ``gm`` in place; returns the new parameters' paths.

    The folded value lands on the parameter of the subgraph with as many
    elements as the result (else the largest one): in place when only this
    computation reads that parameter, else under a new ``<name>_folded``
    attribute. Every value is computed before anything is replaced. Lints and
    recompiles the graph when anything was folded.
    """
    const = _constant_nodes(gm)
    plans = [(root, _plan(gm, root, const)) for root in _fold_roots(gm, const)]
    plans = [(root, *plan) for root, plan in plans if plan is not None]
    if not plans:
        return []
    in_place = {root: _closed(gm, nodes, root, anchor.target) for root, nodes, _, anchor in plans}
    graph = gm.graph
    folded_paths: list[str] = []
    for root, nodes, value, anchor in plans:
        owner, attr, _ = _get_attr(gm, anchor.target)
        if not in_place[root] or anchor.target in folded_paths:
            attr = _unique_attr(owner, attr)
        owner.register_parameter(attr, nn.Parameter(value.detach().clone().contiguous(), requires_grad=False))
        target = f"{anchor.target.rpartition('.')[0]}.{attr}".lstrip(".")
        with graph.inserting_before(root):
            new = graph.get_attr(target)
        new.meta.update(root.meta)
        root.replace_all_uses_with(new)
        folded_paths.append(target)
        log.info("fxquant: folded the weight computed at node %s (from %s) into parameter %s", root.name,
                 ", ".join(sorted({n.target for n in nodes if n.op == "get_attr"})), target)
    graph.eliminate_dead_code()
    _drop_unread_parameters(gm, folded_paths)
    graph.lint()
    gm.recompile()
    return folded_paths


def _drop_unread_parameters(gm: fx.GraphModule, keep: list[str]) -> None:
    """Remove parameters no node reads any more (those the folded subgraphs consumed)."""
    read = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    called = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    for path, _ in list(gm.named_parameters(remove_duplicate=False)):
        module_path = path.rpartition(".")[0]
        inside_called = any(module_path == c or module_path.startswith(c + ".") for c in called)
        if path in read or path in keep or inside_called:
            continue
        owner, attr, _ = _get_attr(gm, path)
        if (type(owner) is nn.Module or owner is gm) and attr in owner._parameters:
            del owner._parameters[attr]  # an FX placeholder parent or the root: nothing else reads it
