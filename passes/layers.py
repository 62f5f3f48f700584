"""Find-layers pass: every weight that feeds a convolution or a matrix product.

A *layer* is one weight tensor, however the graph reaches it:

* ``module``: the ``weight`` of a Conv1d/2d/3d/Linear (or subclass), called as a
  module, read through ``get_attr`` (torchvision's Swin feeds ``qkv.weight`` to a
  wrapped function), or sitting inside a leaf module that was not traced through.
* ``mha``: a projection parameter of an ``nn.MultiheadAttention`` (its output
  projection is an ``nn.Linear`` and is a ``module`` layer).
* ``param``: any other Parameter (not buffer) of rank >= 2 that reaches ``F.linear``,
  ``F.conv*``, a matmul or an attention function through ``get_attr``
  (possibly via view-like ops such as ``.t()``). A weight computed from
  parameters in ``forward`` (weight standardisation, ``g * v / v.norm()``) has
  already been folded into one such Parameter by the trace pass
  (:mod:`fxquant.passes.fold`).

A module called twice is one layer. A Parameter shared by several modules
(weight tying) is one layer; the other owners are listed in ``Layer.tied``.
Names are stable: the module's qualified name for ``module`` layers, the
parameter's qualified name otherwise.

This pass only reads the graph.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from fxquant.nn.attention import MHA_PROJECTION_PARAMS
from fxquant.nn.modules import is_quantized_module, quant_module_for
from fxquant.schema import Layer

__all__ = ["Layer", "find_layers", "layers_by_name", "weight_of", "consumes_weight", "is_view"]

log = logging.getLogger("fxquant.layers")

# Functions whose tensor arguments are weights of a conv / matrix product.
_WEIGHT_CONSUMERS = {
    F.linear, F.bilinear, F.conv1d, F.conv2d, F.conv3d,
    F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
    torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.einsum, operator.matmul,
    F.multi_head_attention_forward,
}
_WEIGHT_CONSUMER_METHODS = {"matmul", "mm", "bmm", "__matmul__"}
# Ops a weight may pass through on its way to a consumer and still be "the weight".
_VIEW_METHODS = {"t", "transpose", "permute", "view", "reshape", "contiguous", "to", "type",
                 "flatten", "squeeze", "unsqueeze", "float", "half", "bfloat16", "expand"}
_VIEW_FUNCTIONS = {torch.t, torch.transpose, torch.permute, torch.reshape, torch.flatten,
                   torch.squeeze, torch.unsqueeze}


def _owner(gm: nn.Module, path: str):
    module_path, _, attr = path.rpartition(".")
    return module_path, attr, gm.get_submodule(module_path)  # "" is gm itself


def _is_consumer(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _WEIGHT_CONSUMERS) or (
        node.op == "call_method" and node.target in _WEIGHT_CONSUMER_METHODS)


def is_view(node: fx.Node) -> bool:
    """Whether ``node`` only reshapes / transposes / casts its first argument."""
    return (node.op == "call_method" and node.target in _VIEW_METHODS) or (
        node.op == "call_function" and node.target in _VIEW_FUNCTIONS)


def consumes_weight(user: fx.Node, node: fx.Node) -> bool:
    """Whether ``user`` computes a conv / matrix product with ``node`` (possibly through view-like ops)."""
    if node not in user.all_input_nodes:
        return False
    return _is_consumer(user) or (is_view(user) and _feeds_weight_consumer(user, 1))


def _feeds_weight_consumer(node: fx.Node, depth: int = 0) -> bool:
    for user in node.users:
        if _is_consumer(user):
            return True
        if is_view(user) and depth < 4 and _feeds_weight_consumer(user, depth + 1):
            return True
    return False


def _module_candidates(path: str, module: nn.Module):
    """(how, module_path, attr, kind) for the weights inside an opaque (leaf) module."""
    for sub_name, sub in module.named_modules():
        full = f"{path}.{sub_name}" if sub_name else path
        if is_quantized_module(sub):
            continue
        if quant_module_for(sub) is not None and isinstance(sub._parameters.get("weight"), torch.Tensor):
            yield "module", full, "weight", type(sub).__name__
        elif isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            log.warning("fxquant: %s (%s) inside untraced module %s overrides forward; it stays float",
                        full, type(sub).__name__, path)
        elif isinstance(sub, nn.MultiheadAttention):
            for attr in MHA_PROJECTION_PARAMS:
                if sub._parameters.get(attr) is not None:
                    yield "mha", full, attr, f"MultiheadAttention.{attr}"


def find_layers(gm: fx.GraphModule) -> list[Layer]:
    """All quantizable layers of ``gm`` in execution order (reads only, never edits)."""
    found: list[tuple] = []  # (how, module_path, attr, kind, node_name)
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            found += [(*c, node.name) for c in _module_candidates(node.target, module)]
        elif node.op == "get_attr":
            module_path, attr, owner = _owner(gm, node.target)
            value = owner._parameters.get(attr)  # buffers are constants, not weights
            if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() < 2:
                continue
            if attr == "weight" and quant_module_for(owner) is not None:
                found.append(("module", module_path, attr, type(owner).__name__, node.name))
            elif _feeds_weight_consumer(node):
                found.append(("param", module_path, attr, "Parameter", node.name))

    layers: list[Layer] = []
    seen_paths: set[tuple[str, str]] = set()
    by_param: dict[int, int] = {}  # id(parameter) -> index in layers
    for how, module_path, attr, kind, node_name in found:
        if (module_path, attr) in seen_paths:
            continue  # a module called twice, or read both ways
        seen_paths.add((module_path, attr))
        owner = gm.get_submodule(module_path)
        weight = getattr(owner, attr)
        first = by_param.get(id(weight))
        if first is not None:  # weight tying: one layer, remember the extra owner
            prev = layers[first]
            path = f"{module_path}.{attr}" if module_path else attr
            layers[first] = Layer(**{**prev.__dict__, "tied": prev.tied + (path,)})
            continue
        name = module_path if how == "module" else (f"{module_path}.{attr}" if module_path else attr)
        by_param[id(weight)] = len(layers)
        layers.append(Layer(name=name, kind=kind, how=how, module_path=module_path, attr=attr,
                            node=node_name, order=len(layers), shape=tuple(weight.shape)))
    return layers


def layers_by_name(gm: fx.GraphModule) -> dict[str, Layer]:
    """``find_layers`` as a dict keyed by the stable layer name."""
    return {layer.name: layer for layer in find_layers(gm)}


def weight_of(gm: nn.Module, layer: Layer) -> torch.Tensor:
    """The live (float) weight tensor of ``layer`` in ``gm``."""
    owner = gm.get_submodule(layer.module_path)
    return getattr(owner, layer.attr)
