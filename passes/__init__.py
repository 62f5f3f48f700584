"""torch.fx passes of fxquant: trace, find layers, importance, search, rewrite, graph export and drawing."""

from passes.graph import to_networkx
from passes.importance import LayerInfo, NodeAnnotation, annotate_importance, layer_infos, update_layer_infos
from passes.layers import Layer, find_layers, layers_by_name
from passes.rewrite import rewrite, validate_bits
from passes.search import LayerDecision, SearchConfig, SearchResult, search_bits
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
    "search_bits",
    "SearchConfig",
    "SearchResult",
    "LayerDecision",
    "rewrite",
    "validate_bits",
    "to_networkx",
    "draw",
    "Drawing",
]
