"""Coverage: which conv/linear/attention weights of a (quantized) model are still float.

Counted without the layer finder, so that a weight it misses is still seen:

* by module type: the ``weight`` of every ``Conv1d/2d/3d``, ``ConvTranspose*``,
  ``Linear``, ``Bilinear`` (subclasses included, wherever they sit, inside
  untraced leaf modules too) and the projection weights of every
  ``nn.MultiheadAttention``, when they are still floating-point tensors;
* in the graph: every floating-point Parameter of rank >= 2 that reaches a
  convolution, matrix product or attention function through operations on
  parameters and buffers only (a weight computed in ``forward``).

A weight that is packed is no longer a float Parameter (its quantized module
holds integer codes), so what remains is what stays float: the layers the
caller chose to keep float and the weights fxquant did not find. The latter
are *missed*: :func:`weight_coverage` separates them using the layer
annotations. Tied weights count once. This pass only reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from fxquant.nn.attention import MHA_PROJECTION_PARAMS
from fxquant.nn.modules import is_quantized_module
from fxquant.nn.storage import weight_storage
from fxquant.passes.importance import layer_infos
from fxquant.passes.layers import consumes_weight

__all__ = ["WeightCoverage", "float_weights", "weight_coverage"]

_WEIGHTED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                   nn.ConvTranspose3d, nn.Linear, nn.Bilinear)


def _float_param(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _typed_weights(model: nn.Module):
    for path, module in model.named_modules():
        if is_quantized_module(module):
            continue
        prefix = f"{path}." if path else ""
        if isinstance(module, _WEIGHTED_TYPES):
            value = module._parameters.get("weight")
            if _float_param(value):
                yield prefix + "weight", value
        elif isinstance(module, nn.MultiheadAttention):
            for attr in MHA_PROJECTION_PARAMS:
                value = module._parameters.get(attr)
                if _float_param(value):
                    yield prefix + attr, value


def _graph_weights(gm: fx.GraphModule):
    """Rank >= 2 float Parameters that reach a weight consumer through parameter-only ops."""
    const: set[fx.Node] = set()
    sources: dict[fx.Node, set[str]] = {}  # const node -> parameter paths it derives from
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            module_path, _, attr = node.target.rpartition(".")
            try:
                owner = gm.get_submodule(module_path) if module_path else gm
            except AttributeError:
                continue
            value = owner._parameters.get(attr)
            const.add(node)
            sources[node] = {node.target} if _float_param(value) and value.dim() >= 2 else set()
        elif node.op in ("call_function", "call_method") and node.all_input_nodes \
                and all(n in const for n in node.all_input_nodes):
            const.add(node)
            sources[node] = set().union(*(sources[n] for n in node.all_input_nodes))
    for node in const:
        if any(user not in const and consumes_weight(user, node) for user in node.users):
            for path in sorted(sources[node]):
                module_path, _, attr = path.rpartition(".")
                owner = gm.get_submodule(module_path) if module_path else gm
                yield path, owner._parameters[attr]


def float_weights(model: nn.Module) -> dict[str, int]:
    """``{parameter path: elements}`` of every conv/linear/attention weight of ``model`` still in float."""
    out: dict[str, int] = {}
    seen: set[int] = set()
    found = list(_typed_weights(model))
    if isinstance(model, fx.GraphModule):
        found += sorted(_graph_weights(model), key=lambda item: item[0])
    for path, value in found:
        if id(value) in seen:
            continue
        seen.add(id(value))
        out[path] = value.numel()
    return out


@dataclass(frozen=True)
class WeightCoverage:
    """How many conv/linear/attention weight elements are packed, and which stay float."""

    packed_params: int  # weight elements held as packed integers (tied weights once)
    float_weights: dict[str, int]  # every float weight left: parameter path -> elements
    missed: dict[str, int]  # those that are no annotated layer (found by no pass: never quantizable)

    @property
    def float_params(self) -> int:
        return sum(self.float_weights.values())

    @property
    def float_fraction(self) -> float:
        """Share of the weight elements left float (0 when the model has none)."""
        total = self.packed_params + self.float_params
        return self.float_params / total if total else 0.0


def weight_coverage(model: nn.Module) -> WeightCoverage:
    """:func:`float_weights` of ``model`` with the packed total and the weights no layer annotation names."""
    floats = float_weights(model)
    names = set()
    if isinstance(model, fx.GraphModule):
        for info in layer_infos(model):
            names.update((info.name, f"{info.name}.weight"))
    missed = {path: n for path, n in floats.items() if path not in names}
    return WeightCoverage(weight_storage(model).packed_params, floats, missed)
