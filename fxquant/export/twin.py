"""Float twin of a compressed model: every packed weight becomes a float Parameter.

``torch.onnx.export`` cannot trace our packed modules' forward (it unpacks bits
with dtype views and numpy), so the exporter traces a *twin*: a deep copy of the
compressed model in which each ``QuantConv*``/``QuantLinear`` is the float module
it replaced, each :class:`~fxquant.nn.attention.QuantMultiheadAttention` a plain
``nn.MultiheadAttention`` and each :class:`~fxquant.nn.modules.PackedWeight` a
Parameter again. Every such Parameter holds exactly the dequantized weight the
compressed model computes with, so the twin's outputs equal the compressed
model's, and :class:`TwinWeight` remembers which packed module each one came
from: :mod:`fxquant.export.onnx` then swaps the exported float initializer for
the stored integer codes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn.utils import skip_init

from fxquant.nn.attention import QuantMultiheadAttention
from fxquant.nn.modules import (
    PackedWeight,
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantLinear,
    is_quantized_module,
)

__all__ = ["TwinWeight", "float_twin"]

_FLOAT_CONV = {QuantConv1d: nn.Conv1d, QuantConv2d: nn.Conv2d, QuantConv3d: nn.Conv3d}


@dataclass(frozen=True)
class TwinWeight:
    """One packed weight of the compressed model and its float Parameter in the twin."""

    name: str  # layer name: module path, parameter path, or "<mha>.<projection>"
    packed: nn.Module  # the packed-weight module (in the twin) holding codes, scale, zero point
    parameter: nn.Parameter  # the twin's float Parameter: exactly ``packed.dequantized_weight()``
    paths: tuple[str, ...]  # every parameter path of the twin holding it (several when tied)

    @property
    def bits(self) -> int:
        return self.packed.bits


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, module)


def _float_module(q: nn.Module) -> nn.Module:
    if isinstance(q, QuantLinear):
        return skip_init(nn.Linear, q.in_features, q.out_features, bias=q.bias is not None)
    conv = _FLOAT_CONV[type(q)]
    return skip_init(conv, q.in_channels, q.out_channels, q.kernel_size, stride=q.stride, padding=q.padding,
                     dilation=q.dilation, groups=q.groups, bias=q.bias is not None, padding_mode=q.padding_mode)


def _float_mha(q: QuantMultiheadAttention) -> nn.MultiheadAttention:
    mha = nn.MultiheadAttention.__new__(nn.MultiheadAttention)
    mha.__dict__.update(q.__dict__)
    mha._parameters = dict(q._parameters)
    mha._modules = {k: v for k, v in q._modules.items() if not k.endswith("_packed")}
    mha._buffers = dict(q._buffers)
    return mha


class _Twin:
    """Builds the twin: one float Parameter per packed storage (tied weights share it)."""

    def __init__(self) -> None:
        self.by_storage: dict[int, dict] = {}

    def parameter(self, name: str, packed: nn.Module, path: str) -> nn.Parameter:
        key = id(packed.packed_weight)
        entry = self.by_storage.get(key)
        if entry is None:
            weight = packed.dequantized_weight().detach().to(torch.float32).clone()
            entry = {"name": name, "packed": packed, "param": nn.Parameter(weight, requires_grad=False),
                     "paths": []}
            self.by_storage[key] = entry
        entry["paths"].append(path)
        return entry["param"]

    def weights(self) -> list[TwinWeight]:
        return [TwinWeight(e["name"], e["packed"], e["param"], tuple(e["paths"])) for e in self.by_storage.values()]


def _rewrite_graph(gm: fx.GraphModule, modules: set[str], params: set[str]) -> None:
    """Reads of replaced packed modules become reads of the twin's float Parameters."""
    graph = gm.graph
    for node in list(graph.nodes):
        new_target = None
        if node.op == "call_method" and node.target == "dequantized_weight":
            owner = node.args[0]
            if isinstance(owner, fx.Node) and owner.op == "get_attr" and owner.target in modules:
                new_target = f"{owner.target}.weight"
        elif node.op == "call_module" and node.target in params:
            new_target = node.target
        if new_target is None:
            continue
        with graph.inserting_before(node):
            read = graph.get_attr(new_target)
        read.meta.update(node.meta)
        node.replace_all_uses_with(read)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()


def float_twin(qmodel: nn.Module) -> tuple[nn.Module, list[TwinWeight]]:
    """A float copy of ``qmodel`` computing with its dequantized weights (``qmodel`` is not edited).

    Returns the twin (in eval mode, no gradients) and one :class:`TwinWeight` per
    packed weight storage, in module order. Raises ``ValueError`` naming the
    module for a packed-weight module of a class fxquant does not know (a user
    mapping), and for a ``PackedWeight`` called by code outside a ``torch.fx``
    graph (it cannot be turned back into a Parameter).
    """
    twin = copy.deepcopy(qmodel).cpu().eval()  # exported on the CPU, in eval mode
    builder = _Twin()
    swapped_modules: set[str] = set()
    swapped_params: set[str] = set()
    entries = list(twin.named_modules(remove_duplicate=False))
    mha_paths = {path for path, m in entries if isinstance(m, QuantMultiheadAttention)}
    for path, module in entries:
        if not is_quantized_module(module) and not isinstance(module, QuantMultiheadAttention):
            continue
        parent_path, _, child = path.rpartition(".")
        if isinstance(module, QuantMultiheadAttention):
            mha = _float_mha(twin.get_submodule(path))
            for key, packed in module._modules.items():
                if key.endswith("_packed") and isinstance(packed, PackedWeight):
                    attr = key[: -len("_packed")]
                    mha._parameters[attr] = builder.parameter(f"{path}.{attr}", packed, f"{path}.{attr}")
            _set(twin, path, mha)
        elif isinstance(module, PackedWeight):
            if parent_path in mha_paths and child.endswith("_packed"):
                continue  # handled with its attention module
            if not isinstance(twin, fx.GraphModule):
                raise ValueError(f"{path}: a PackedWeight outside a torch.fx graph cannot be exported; export "
                                 "the GraphModule fxquant.quantize/compress returned")
            parent = twin.get_submodule(parent_path) if parent_path else twin
            delattr(parent, child)
            parent.register_parameter(child, builder.parameter(path, module, path))
            swapped_params.add(path)
        elif type(module) in _FLOAT_CONV or type(module) is QuantLinear:
            float_module = _float_module(module)
            float_module.weight = builder.parameter(path, module, f"{path}.weight")
            if module.bias is not None:
                float_module.bias = nn.Parameter(module.bias.detach().to(torch.float32).clone(),
                                                 requires_grad=False)
            _set(twin, path, float_module.eval())
            swapped_modules.add(path)
        else:
            raise ValueError(f"{path}: packed-weight module {type(module).__name__} has no known float "
                             "counterpart; ONNX export supports QuantConv1d/2d/3d, QuantLinear, PackedWeight "
                             "and QuantMultiheadAttention")
    if isinstance(twin, fx.GraphModule):
        _rewrite_graph(twin, swapped_modules, swapped_params)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin, builder.weights()
