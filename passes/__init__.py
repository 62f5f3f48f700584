"""torch.fx passes of fxquant, installed as ``fxquant.passes``.

Trace, find layers, annotate importance (eqs. 1-3), data-aware rounding, search
bit-widths, rewrite to packed modules, export the graph to networkx. The result
types they write live in :mod:`fxquant.schema`; nothing here imports the file
format, the report, the CLI or the API.
"""

from fxquant.passes.coverage import WeightCoverage, float_weights, weight_coverage
from fxquant.passes.fold import fold_weights
from fxquant.passes.graph import to_networkx
from fxquant.passes.importance import annotate_importance, layer_infos, update_layer_infos
from fxquant.passes.layers import find_layers, layers_by_name
from fxquant.passes.rewrite import rewrite, validate_bits
from fxquant.passes.search import search_bits
from fxquant.passes.sensitivity import measure_sensitivity
from fxquant.passes.sensitivity_search import search_sensitivity
from fxquant.passes.trace import FxquantTracer, TraceFailure, trace
from fxquant.schema import (FrontierPoint, Layer, LayerDecision, LayerInfo, NodeAnnotation, SearchConfig,
                            SearchResult)

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
    "measure_sensitivity",
    "search_sensitivity",
    "FrontierPoint",
    "rewrite",
    "validate_bits",
    "to_networkx",
    "fold_weights",
    "float_weights",
    "weight_coverage",
    "WeightCoverage",
]
