"""torch.fx passes of fxquant: trace, find layers, importance, rewrite (search and drawing build on them)."""

from passes.graph import to_networkx
from passes.importance import LayerInfo, NodeAnnotation, annotate_importance, layer_infos, update_layer_infos
from passes.layers import Layer, find_layers, layers_by_name
from passes.rewrite import rewrite, validate_bits
from passes.trace import FxquantTracer, TraceFailure, trace
from passes.visualize import Drawing, draw

__all__ = [
    "trace",
    "FxquantTracer",
    "TraceFailure",
    "Layer",
    "find_layers",
    "layers_by_name",
    "LayerInfo",
    "NodeAnnotation",
    "annotate_importance",
    "layer_infos",
    "update_layer_infos",
    "rewrite",
    "validate_bits",
    "to_networkx",
    "draw",
    "Drawing",
]
