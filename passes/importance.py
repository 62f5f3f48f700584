"""Importance pass: annotate every layer with the paper's eqs. 1-3.

Each graph node that computes with one or more layers gets one frozen
:class:`NodeAnnotation` under ``node.meta["fxquant"]``, holding a
:class:`LayerInfo` per layer (a conv node holds one; an ``nn.MultiheadAttention``
or an untraced leaf module may hold several). Later passes (search, rewrite)
replace the infos with copies carrying the chosen bits and margin.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import fx

from fxquant.core.importance import importance_scores
from fxquant.schema import META_KEY, LayerInfo, NodeAnnotation
from fxquant.passes.layers import find_layers, weight_of
from fxquant.schema import Layer

__all__ = ["LayerInfo", "NodeAnnotation", "annotate_importance", "layer_infos", "update_layer_infos",
           "META_KEY"]

def annotate_importance(gm: fx.GraphModule, *, w_p: float = 0.5, w_v: float = 0.5,
                        layers: list[Layer] | None = None) -> list[LayerInfo]:
    """Annotate ``gm`` in place (``node.meta`` only; the graph is unchanged) with eqs. 1-3.

    Returns the layers' infos in execution order. ``layers`` defaults to
    :func:`fxquant.passes.layers.find_layers`.
    """
    layers = find_layers(gm) if layers is None else layers
    if not layers:
        raise ValueError(f"{type(gm).__name__} has no conv/linear/attention weights to quantize")
    variances = []
    for layer in layers:
        w = weight_of(gm, layer).detach()
        if not torch.isfinite(w).all():
            raise ValueError(f"layer {layer.name}: weight contains NaN/inf")
        variances.append(float(w.double().var(unbiased=False)))
    n_p, n_v, imp = importance_scores([lay.params for lay in layers], variances, w_p, w_v)
    infos = [
        LayerInfo(name=lay.name, kind=lay.kind, order=lay.order, shape=lay.shape, params=lay.params,
                  n_p=p, variance=v, n_v=nv, importance=i)
        for lay, p, v, nv, i in zip(layers, n_p, variances, n_v, imp)
    ]
    by_node: dict[str, list[LayerInfo]] = {}
    for lay, info in zip(layers, infos):
        by_node.setdefault(lay.node, []).append(info)
    for node in gm.graph.nodes:
        if node.name in by_node:
            node.meta[META_KEY] = NodeAnnotation(tuple(by_node[node.name]))
        else:
            node.meta.pop(META_KEY, None)
    return infos


def layer_infos(gm: fx.GraphModule) -> list[LayerInfo]:
    """The annotated layers of ``gm`` in execution order (empty if never annotated)."""
    infos = [info for node in gm.graph.nodes if META_KEY in node.meta
             for info in node.meta[META_KEY].layers]
    return sorted(infos, key=lambda info: info.order)


def update_layer_infos(gm: fx.GraphModule, changes: dict[str, dict]) -> None:
    """Replace, in place, the named layers' infos by copies with ``changes[name]`` applied."""
    for node in gm.graph.nodes:
        ann = node.meta.get(META_KEY)
        if ann is None:
            continue
        new = tuple(replace(i, **changes[i.name]) if i.name in changes else i for i in ann.layers)
        if new != ann.layers:
            node.meta[META_KEY] = NodeAnnotation(new)
