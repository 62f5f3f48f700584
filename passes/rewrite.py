"""Rewrite pass: replace layers by modules carrying bit-packed integer weights.

* ``module`` layers: the Conv/Linear module is swapped for its quantized class
  (``fxquant.DEFAULT_QUANT_MODULE_MAPPING``, or a user mapping); ``get_attr``
  reads of its weight become ``get_attr(module).dequantized_weight()``.
* ``mha`` layers: the ``nn.MultiheadAttention`` becomes a
  :class:`fxquant.nn.attention.QuantMultiheadAttention`.
* ``param`` layers: the Parameter is replaced by a :class:`fxquant.PackedWeight`
  child under the same name, and each ``get_attr`` of it by a ``call_module``.

Tied weights are packed once; every owner shares the same packed buffers.
The float weights are gone afterwards: ``state_dict()`` holds the packed bytes.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import fx, nn

from fxquant.nn.attention import QuantMultiheadAttention
from fxquant.core.config import QuantConfig, check_bits
from fxquant.nn.modules import PackedWeight, quant_module_for
from fxquant.passes.importance import update_layer_infos
from fxquant.schema import META_KEY
from fxquant.passes.layers import find_layers
from fxquant.schema import Layer

__all__ = ["rewrite", "validate_bits"]


def validate_bits(bits: dict[str, int | None], layers: list[Layer]) -> dict[str, int]:
    """Check a ``{layer: bits}`` map against the model's layers; drop ``None`` (= keep float)."""
    if not isinstance(bits, dict):
        raise ValueError(f"bits must be a dict {{layer_name: bits}}, got {type(bits).__name__}")
    names = {layer.name for layer in layers}
    unknown = sorted(set(bits) - names)
    if unknown:
        sample = ", ".join(sorted(names)[:8])
        raise ValueError(f"no layer named {unknown[:5]} in the model; its layers include: {sample}")
    out = {}
    for name, b in bits.items():
        if b is None:
            continue
        out[name] = check_bits(b, f"layer {name}: bits (None keeps it float)")
    return out


def _set_submodule(gm: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = gm.get_submodule(parent_path)
    module.train(getattr(parent, child).training)  # the replacement keeps the train/eval mode
    setattr(parent, child, module)


def _split(path: str) -> tuple[str, str]:
    module_path, _, attr = path.rpartition(".")
    return module_path, attr


def _quantize_module(gm, layer: Layer, bits: int, config, mapping, given=None) -> dict[str, str]:
    owner = gm.get_submodule(layer.module_path)
    qcls = quant_module_for(owner, mapping)
    if qcls is None:
        raise ValueError(f"layer {layer.name}: no quantized module for {type(owner).__name__} in the mapping")
    if given is None:
        q = qcls.from_float(owner, bits, config, name=layer.name)
    else:
        qweight, bias = given
        if qweight.bits != bits:
            raise ValueError(f"layer {layer.name}: the quantized weight given has {qweight.bits} bits, "
                             f"the layer is to get {bits}")
        try:
            q = qcls.from_float(owner, bits, config, name=layer.name, qweight=qweight)
        except TypeError as e:
            raise ValueError(f"layer {layer.name}: {qcls.__name__}.from_float takes no qweight= argument, "
                             "needed to install a data-aware quantized weight") from e
        if bias is not None:
            q.bias = nn.Parameter(bias.detach().to(torch.float32).clone(), requires_grad=False)
    _set_submodule(gm, layer.module_path, q)
    reads = {layer.param_path: layer.module_path}
    for tied_path in layer.tied:
        tied_owner_path, _ = _split(tied_path)
        tied_owner = gm.get_submodule(tied_owner_path)
        tq = quant_module_for(tied_owner, mapping).from_float(tied_owner, bits, config, name=tied_path)
        for buf in ("packed_weight", "weight_scale", "weight_zero_point"):
            setattr(tq, buf, getattr(q, buf))  # one storage for the tied weight
        _set_submodule(gm, tied_owner_path, tq)
        reads[tied_path] = tied_owner_path
    return reads


def _quantize_param(gm, layer: Layer, bits: int, config) -> list[str]:
    owner = gm.get_submodule(layer.module_path)
    packed = PackedWeight.from_float(getattr(owner, layer.attr).detach(), bits, config, name=layer.name)
    paths = [layer.param_path, *layer.tied]
    for path in paths:
        module_path, attr = _split(path)
        holder = gm.get_submodule(module_path)
        delattr(holder, attr)
        holder.add_module(attr, packed.train(holder.training))
    return paths


def _replace_node(graph: fx.Graph, node: fx.Node, new: fx.Node) -> None:
    new.meta.update(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def rewrite(gm: fx.GraphModule, bits: dict[str, int | None], *, config: QuantConfig | None = None,
            mapping: dict[type, type] | None = None, layers: list[Layer] | None = None,
            quantized: dict[str, tuple] | None = None) -> fx.GraphModule:
    """Rewrite ``gm`` in place: quantize each layer named in ``bits`` to its width, then lint and recompile.

    Args:
        bits: ``{layer_name: bits}``; layers absent or mapped to ``None`` stay float.
        config: quantizer settings (``bits`` overridden per layer); default ``QuantConfig()``.
        mapping: float-module class -> quantized class (default
            ``fxquant.DEFAULT_QUANT_MODULE_MAPPING``).
        layers: the result of :func:`fxquant.passes.layers.find_layers`, if already computed.
        quantized: ``{layer: (QuantizedWeight, bias or None)}`` computed beforehand
            (data-aware rounding, :mod:`fxquant.passes.calibrate`) for ``module`` layers;
            others are quantized from their float weight under ``config``.

    Returns ``gm`` itself. The layers' annotations (if any) get their ``bits``.
    """
    layers = find_layers(gm) if layers is None else layers
    widths = validate_bits(bits, layers)
    module_reads: dict[str, str] = {}  # weight path -> quantized module path
    packed_params: set[str] = set()
    mha_widths: dict[str, dict[str, int]] = defaultdict(dict)
    for layer in layers:
        if layer.name not in widths:
            continue
        b = widths[layer.name]
        if layer.how == "module":
            given = (quantized or {}).get(layer.name)
            module_reads.update(_quantize_module(gm, layer, b, config, mapping, given))
        elif layer.how == "mha":
            mha_widths[layer.module_path][layer.attr] = b
        else:
            packed_params.update(_quantize_param(gm, layer, b, config))
    for path, attrs in mha_widths.items():
        mha = gm.get_submodule(path)
        _set_submodule(gm, path, QuantMultiheadAttention.from_float(mha, attrs, config, name=path))

    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "get_attr":
            continue
        if node.target in module_reads:
            with graph.inserting_before(node):
                owner = graph.get_attr(module_reads[node.target])
                _replace_node(graph, node, graph.call_method("dequantized_weight", (owner,)))
        elif node.target in packed_params:
            with graph.inserting_before(node):
                _replace_node(graph, node, graph.call_module(node.target, ()))
    graph.lint()
    gm.recompile()
    if any(META_KEY in n.meta for n in graph.nodes):
        update_layer_infos(gm, {name: {"bits": b} for name, b in widths.items()})
    return gm
