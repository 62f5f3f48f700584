"""ONNX export of a compressed model with its real low-bit weights.

Route (see :mod:`fxquant.export.twin` for why our own forward is not traced):

1. build the float twin of the compressed model, whose weights are exactly the
   dequantized ones;
2. export it with the TorchScript-based ``torch.onnx.export`` (works offline, no
   onnxscript) at opset 20, a dynamic batch dimension, no constant folding (so
   every weight stays one initializer), and convert the graph to the opset the
   code widths need (:func:`required_opset`);
3. match each float initializer to its layer by *value* (the twin's Parameter,
   byte for byte) and replace it with the stored codes, decoded in the graph by
   ``DequantizeLinear`` or by the bit-stream subgraph
   (:mod:`fxquant.export.bitstream`). A layer whose weight is not found raises.

Widths ONNX has no type for (1, 3, 5, 6, 7 bits) go into the next container
(``packing="container"``, 1.14-2x the ideal size, logged as a warning) or into
an exact bit-stream (``packing="bitstream"``). To let the search choose only
widths stored natively, pass ``candidates=ONNX_NATIVE_BITS`` to
:func:`fxquant.compress`.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper, version_converter
from torch import nn

from fxquant.export.bitstream import NATIVE_TYPES, bitstream_nodes, container_bits, native_nodes
from fxquant.export.twin import float_twin
from fxquant.passes.layers import find_layers

__all__ = ["ONNX_NATIVE_BITS", "PACKINGS", "ExportedLayer", "ExportResult", "export_onnx", "required_opset"]

log = logging.getLogger("fxquant.export")

ONNX_NATIVE_BITS = (2, 4, 8)  # code widths DequantizeLinear reads natively: exact size, no container
PACKINGS = ("container", "bitstream")
_TRACE_OPSET = 20  # the newest opset the TorchScript exporter writes
_TORCH_DIR = Path(torch.__file__).resolve().parent


@dataclass(frozen=True)
class ExportedLayer:
    """How one quantized weight is stored in the ONNX file."""

    name: str
    bits: int
    params: int
    storage: str  # "uint8" | "uint4" | "uint2" | "bitstream"
    stored_bits: int  # bits per code in the file (the container width, or ``bits`` for a bit-stream)
    code_bytes: int  # bytes of the codes initializer
    ideal_bytes: int  # ceil(params * bits / 8)
    grid_bytes: int  # scales, zero points and offsets


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote."""

    path: str
    opset: int
    packing: str
    file_bytes: int
    weight_bytes: int  # codes initializers of the quantized weights
    ideal_bytes: int  # sum of ceil(params * bits / 8): fxquant's own packed bytes
    grid_bytes: int  # their scales, zero points and offsets
    float_bytes: int  # every other initializer (float layers, biases, norms, ...)
    layers: tuple[ExportedLayer, ...]
    float_layers: tuple[str, ...]  # conv/linear/attention weights left in float

    @property
    def wider_layers(self) -> tuple[ExportedLayer, ...]:
        """Layers stored in a container wider than their width."""
        return tuple(layer for layer in self.layers if layer.stored_bits > layer.bits)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_text(self) -> str:
        lines = [f"{self.path}: {self.file_bytes:,} bytes, ONNX opset {self.opset}, packing {self.packing!r}",
                 f"  quantized weights: {len(self.layers)} layers, codes {self.weight_bytes:,} B "
                 f"(ideal sum n*b/8: {self.ideal_bytes:,} B) + scales/zero points {self.grid_bytes:,} B",
                 f"  other initializers (float): {self.float_bytes:,} B"]
        if self.float_layers:
            lines.append(f"  layers left float: {', '.join(self.float_layers)}")
        wider = self.wider_layers
        if wider:
            extra = sum(layer.code_bytes - layer.ideal_bytes for layer in wider)
            lines.append(f"  {len(wider)} layer(s) stored in a wider container ({extra:,} B above ideal): "
                         + ", ".join(f"{layer.name} {layer.bits}->{layer.stored_bits} bits" for layer in wider))
        return "\n".join(lines)


def required_opset(widths, packing: str = "container") -> int:
    """The lowest opset storing codes of these widths: 25 for 2-bit codes, 21 for 4-bit, else 20."""
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
    needed = set(widths) & set(NATIVE_TYPES) if packing == "bitstream" else {container_bits(b) for b in widths}
    return max([_TRACE_OPSET] + [NATIVE_TYPES[b][1] for b in needed])


def _example_inputs(example_input, input_shape) -> tuple[torch.Tensor, ...]:
    if example_input is not None and input_shape is not None:
        raise ValueError("give example_input or input_shape, not both")
    if example_input is None:
        if input_shape is None:
            raise ValueError("export_onnx needs example_input= (a tensor) or input_shape= (e.g. (1, 3, 64, 64))")
        try:
            shape = tuple(int(s) for s in input_shape)
        except (TypeError, ValueError) as e:
            raise ValueError(f"input_shape must be a sequence of ints, got {input_shape!r}") from e
        if not shape or min(shape) < 1:
            raise ValueError(f"input_shape must be positive sizes, got {input_shape!r}")
        return (torch.zeros(shape),)
    inputs = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise ValueError(f"example_input must be a tensor or a tuple of tensors, got {type(example_input).__name__}")
    return tuple(t.detach().cpu() for t in inputs)


def _trace(twin: nn.Module, inputs, input_names, output_names) -> onnx.ModelProto:
    buffer = io.BytesIO()
    dynamic = {name: {0: "batch"} for name in (*input_names, *output_names)}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's fused eval fast path has no ONNX symbolic; the regular path does.
    torch.backends.mha.set_fastpath_enabled(False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.onnx.export(twin, inputs, buffer, dynamo=False, opset_version=_TRACE_OPSET,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic, do_constant_folding=False, export_params=True,
                              keep_initializers_as_inputs=False, training=torch.onnx.TrainingMode.EVAL)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"torch.onnx.export failed on the float twin of {type(twin).__name__}: {first}") from e
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    for w in caught:
        # torch's own checks (e.g. in F.multi_head_attention_forward) are trace-safe; user code branching on
        # tensor values is not.
        in_torch = Path(w.filename).resolve().is_relative_to(_TORCH_DIR)
        if issubclass(w.category, torch.jit.TracerWarning) and not in_torch \
                and "might cause the trace to be incorrect" in str(w.message):
            where = f"{Path(w.filename).name}:{w.lineno}"
            raise ValueError(f"the model has data-dependent control flow ({where}: {w.message}); an ONNX graph "
                             "would keep only the branch taken for the example input")
    return onnx.load_from_string(buffer.getvalue())


def _float_arrays(model: onnx.ModelProto):
    """(container, index, name, array) of every float32 initializer and Constant tensor."""
    for i, init in enumerate(model.graph.initializer):
        if init.data_type == onnx.TensorProto.FLOAT:
            yield "initializer", i, init.name, init
    for i, node in enumerate(model.graph.node):
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == onnx.TensorProto.FLOAT:
                    yield "constant", i, node.output[0], attr.t


def _key(array: np.ndarray) -> tuple:
    return tuple(array.shape), np.ascontiguousarray(array, dtype=np.float32).tobytes()


def _replace_weights(model: onnx.ModelProto, weights, packing: str, name_of) -> tuple[list[ExportedLayer], set]:
    """Swap each quantized weight's float initializer for its decoder; returns the layers and added names."""
    by_value = {_key(w.parameter.detach().cpu().numpy()): w for w in weights}
    hits: dict[str, list[tuple[str, int, str]]] = {}
    for kind, index, name, tensor in _float_arrays(model):
        w = by_value.get(_key(numpy_helper.to_array(tensor)))
        if w is not None:
            hits.setdefault(w.name, []).append((kind, index, name))
    missing = [w.name for w in weights if w.name not in hits]
    if missing:
        raise ValueError(f"layer(s) {missing}: the exported graph holds no initializer equal to the weight (the "
                         "exporter transformed it); cannot store their codes")
    drop_inits, drop_nodes = set(), set()
    new_nodes, new_inits, shared, exported = [], [], {}, []
    for w in weights:
        code_bytes = grid_bytes = 0
        for kind, index, name in hits[w.name]:
            prefix = name_of(name)
            native = packing == "container" or w.bits in NATIVE_TYPES
            nodes, inits, code_bytes, grid_bytes = (native_nodes(prefix, w.packed, name) if native
                                                    else bitstream_nodes(prefix, w.packed, name, shared))
            new_nodes += nodes
            new_inits += inits
            (drop_inits if kind == "initializer" else drop_nodes).add(index)
        numel = math.prod(w.packed.weight_shape)
        native = packing == "container" or w.bits in NATIVE_TYPES
        stored = container_bits(w.bits) if native else w.bits
        storage = f"uint{stored}" if native else "bitstream"
        exported.append(ExportedLayer(w.name, w.bits, numel, storage, stored, code_bytes * len(hits[w.name]),
                                      math.ceil(numel * w.bits / 8), grid_bytes * len(hits[w.name])))
    graph = model.graph
    kept_inits = [init for i, init in enumerate(graph.initializer) if i not in drop_inits]
    kept_nodes = [node for i, node in enumerate(graph.node) if i not in drop_nodes]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits + list(shared.values()) + new_inits)
    del graph.node[:]
    graph.node.extend(new_nodes + kept_nodes)  # decoders first: they read only initializers
    return exported, {i.name for i in new_inits} | set(shared)


def _nbytes(tensor: onnx.TensorProto) -> int:
    return len(tensor.raw_data) if tensor.raw_data else numpy_helper.to_array(tensor).nbytes


def _unique_names(model: onnx.ModelProto):
    taken = {i.name for i in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    taken |= {n.name for n in model.graph.node}

    def name_of(weight_name: str) -> str:
        base = weight_name.replace("::", "_")
        prefix, k = base, 0
        while any(t.startswith(prefix + "_") for t in taken):
            k += 1
            prefix = f"{base}_q{k}"
        taken.add(prefix + "_")
        return prefix

    return name_of


def export_onnx(qmodel: nn.Module, path, *, example_input=None, input_shape=None, opset: int | None = None,
                packing: str = "container", input_names=("input",), output_names=("output",)) -> ExportResult:
    """Write ``qmodel`` as one self-contained ONNX file with its low-bit weights; ``qmodel`` is not edited.

    Args:
        qmodel: a model from :func:`fxquant.compress` / :func:`fxquant.quantize` /
            :func:`fxquant.load` (or any module holding fxquant's packed modules).
        path: the ``.onnx`` file to write.
        example_input: a tensor (or tuple) shaped like one input; the batch
            dimension is exported as dynamic. Or give ``input_shape``.
        opset: default: the lowest that stores the widths present
            (:func:`required_opset`); a lower one raises ``ValueError``.
        packing: ``"container"`` (each code in uint8/uint4/uint2, decoded by
            ``DequantizeLinear``) or ``"bitstream"`` (widths 1, 3, 5, 6, 7 as an exact
            uint8 bit-stream unpacked in the graph; 2, 4, 8 as in ``"container"``).

    The graph is traced on the CPU in eval mode (batch norm with running
    statistics, no dropout), whatever mode ``qmodel`` is in. Run it with
    :func:`fxquant.export.onnx_session`, which keeps onnxruntime's
    results exact. Layers stored in a wider container are logged as a warning
    and listed in ``ExportResult.wider_layers``.
    """
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
    inputs = _example_inputs(example_input, input_shape)
    if len(input_names) != len(inputs):
        raise ValueError(f"{len(inputs)} example input(s) but input_names={tuple(input_names)}")
    twin, weights = float_twin(qmodel)
    need = required_opset({w.bits for w in weights}, packing)
    if opset is None:
        opset = need
    elif isinstance(opset, bool) or not isinstance(opset, int) or opset < need:
        raise ValueError(f"opset={opset!r} cannot store the widths {sorted({w.bits for w in weights})} with "
                         f"packing={packing!r}: it needs opset >= {need}")
    elif opset > onnx.defs.onnx_opset_version():
        raise ValueError(f"opset={opset} is newer than this onnx package knows ({onnx.defs.onnx_opset_version()})")
    try:
        graph_layers = find_layers(twin) if hasattr(twin, "graph") else []
    except Exception:  # noqa: BLE001 - the float-layer list is informative only
        graph_layers = []
    quantized_paths = {p for w in weights for p in (w.name, *w.paths)}
    float_layers = tuple(layer.name for layer in graph_layers
                         if layer.name not in quantized_paths and layer.param_path not in quantized_paths)

    model = _trace(twin, inputs, input_names, output_names)
    if opset > _TRACE_OPSET:
        try:
            model = version_converter.convert_version(model, opset)
        except Exception as e:
            raise ValueError(f"converting the exported graph from opset {_TRACE_OPSET} to {opset} failed: {e}") from e
    layers, added = _replace_weights(model, weights, packing, _unique_names(model))
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for(list(model.opset_import)))
    model.producer_name = "fxquant"
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ValueError(f"the ONNX model fxquant built does not check: {e}") from e
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(out))

    other_bytes = sum(_nbytes(i) for i in model.graph.initializer if i.name not in added)
    result = ExportResult(path=str(out), opset=opset, packing=packing, file_bytes=out.stat().st_size,
                          weight_bytes=sum(layer.code_bytes for layer in layers),
                          ideal_bytes=sum(layer.ideal_bytes for layer in layers),
                          grid_bytes=sum(layer.grid_bytes for layer in layers), float_bytes=other_bytes,
                          layers=tuple(layers), float_layers=float_layers)
    wider = result.wider_layers
    if wider:
        log.warning("fxquant: ONNX has no %s-bit type: %s stored in wider containers (codes %d B, %d B at their "
                    "own widths); use packing='bitstream' for the exact size, or search with "
                    "candidates=ONNX_NATIVE_BITS",
                    "/".join(str(b) for b in sorted({layer.bits for layer in wider})),
                    ", ".join(f"{layer.name} ({layer.bits}->{layer.stored_bits} bits)" for layer in wider),
                    result.weight_bytes, result.ideal_bytes)
    if float_layers:
        log.info("fxquant: layers left float in the ONNX file: %s", ", ".join(float_layers))
    return result
