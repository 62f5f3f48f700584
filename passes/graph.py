"""Export an annotated GraphModule as a networkx dataflow graph."""

from __future__ import annotations

from dataclasses import asdict

import networkx as nx
from torch import fx

from fxquant.schema import META_KEY

__all__ = ["to_networkx"]


def to_networkx(gm: fx.GraphModule) -> nx.DiGraph:
    """The dataflow graph of ``gm`` (read only): one networkx node per FX node, in execution order.

    Node attributes: ``op``, ``target`` (str), ``order`` (position in the graph),
    ``is_layer``; and for nodes computing with layers: ``layers`` (a list of
    dicts, one per layer, with every :class:`~fxquant.passes.importance.LayerInfo`
    field), ``importance`` (max over its layers), ``params`` and ``bits``
    (parameter-weighted mean, None if undecided). Edges run producer -> consumer.
    """
    g = nx.DiGraph(name=type(gm).__name__)
    for order, node in enumerate(gm.graph.nodes):
        attrs = {"op": node.op, "target": str(getattr(node.target, "__name__", node.target)),
                 "order": order, "is_layer": False}
        ann = node.meta.get(META_KEY)
        if ann is not None:
            attrs.update(is_layer=True, layers=[asdict(i) for i in ann.layers], importance=ann.importance,
                         params=ann.params, bits=ann.bits)
        g.add_node(node.name, **attrs)
    for node in gm.graph.nodes:
        for src in node.all_input_nodes:
            g.add_edge(src.name, node.name)
    return g
