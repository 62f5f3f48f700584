"""ONNX subgraphs that turn stored integer codes back into a float weight.

Two storages, both built from fxquant's own packed bytes (``packed_weight``,
layout in :mod:`fxquant.core.packing`):

* **native**: a ``DequantizeLinear`` whose codes are a uint8 / uint4 / uint2
  initializer. ONNX packs 4- and 2-bit elements least significant bits first,
  exactly as fxquant does, so the initializer's bytes are our packed bytes at
  8, 4 and 2 bits; 1-, 3-, 5-, 6- and 7-bit codes are re-packed into the next
  type up (the "container").
* **bit-stream**: the packed bytes as a uint8 initializer (exactly
  ``ceil(n * b / 8)`` bytes at any width), unpacked with standard integer ops.
  Any 8 consecutive codes fill exactly ``b`` bytes, so the bytes are viewed as
  ``[groups, b]`` and code ``k`` of a group is
  ``(byte[lo_k] + 256 * byte[lo_k + 1]) / 2**shift_k mod 2**b`` (the high byte
  only where the code spills over a byte boundary). onnxruntime folds the whole
  subgraph to a float constant when the session starts: exact size on disk,
  float memory at run time.

``DequantizeLinear`` needs an integer zero point of the code type. Ours are
float: affine grids have integer ones, but the symmetric scheme and 1-bit codes
use half-integers. Those layers get zero point 0 and a per-channel float
``Add`` of ``-scale * zero_point`` (one float per channel, like the stored zero
point); the bit-stream path subtracts the float zero point directly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from fxquant.core.packing import pack

__all__ = ["NATIVE_TYPES", "container_bits", "native_nodes", "bitstream_nodes"]

# Code widths ONNX stores natively -> (TensorProto type, first opset whose DequantizeLinear takes it).
NATIVE_TYPES = {8: (TensorProto.UINT8, 13), 4: (TensorProto.UINT4, 21), 2: (TensorProto.UINT2, 25)}


def container_bits(bits: int) -> int:
    """The narrowest native code width holding ``bits``-bit codes (2, 4 or 8)."""
    return min(b for b in NATIVE_TYPES if b >= bits)


def _raw(name: str, data_type: int, dims, raw: bytes) -> TensorProto:
    t = TensorProto()
    t.name, t.data_type = name, data_type
    t.dims.extend(int(d) for d in dims)
    t.raw_data = raw
    return t


def _grid(packed, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(scale, zero point) as float32 arrays and whether the grid is per channel (axis 0)."""
    scale = packed.weight_scale.detach().to(torch.float32).reshape(-1).numpy()
    zero_point = packed.weight_zero_point.detach().to(torch.float32).reshape(-1).numpy()
    per_channel = scale.size > 1 or (len(shape) > 0 and shape[0] == 1 and scale.size == 1)
    return scale, zero_point, per_channel


def _channel_shape(n: int, rank: int) -> list[int]:
    return [n] + [1] * (rank - 1)


def native_nodes(prefix: str, packed, output: str) -> tuple[list, list, int, int]:
    """DequantizeLinear nodes producing ``output`` from ``packed``'s codes in their container type.

    Returns (nodes, initializers, code bytes, grid bytes).
    """
    bits, shape = packed.bits, tuple(packed.weight_shape)
    width = container_bits(bits)
    data_type = NATIVE_TYPES[width][0]
    codes = packed.weight_codes().reshape(-1)
    raw = packed.packed_weight.numpy().tobytes() if width == bits else pack(codes, width).numpy().tobytes()
    scale, zero_point, per_channel = _grid(packed, shape)
    inits = [_raw(f"{prefix}_codes", data_type, shape, raw)]
    integral = np.array_equal(zero_point, np.round(zero_point)) and zero_point.min(initial=0) >= 0 \
        and zero_point.max(initial=0) <= (1 << width) - 1
    grid_dims = [scale.size] if per_channel else []
    inits.append(numpy_helper.from_array(scale.reshape(grid_dims), f"{prefix}_scale"))
    zp = zero_point.astype(np.uint8) if integral else np.zeros_like(zero_point, dtype=np.uint8)
    zp_raw = pack(torch.from_numpy(zp), width).numpy().tobytes()
    inits.append(_raw(f"{prefix}_zero_point", data_type, grid_dims, zp_raw))
    attrs = {"axis": 0} if per_channel else {}
    grid_bytes = len(inits[1].raw_data) + len(inits[2].raw_data)
    if integral:
        nodes = [helper.make_node("DequantizeLinear", [i.name for i in inits], [output], name=f"{prefix}_dq", **attrs)]
        return nodes, inits, len(raw), grid_bytes
    # Half-integer (or other fractional) zero point: s * (q - z) = s * q + (-s * z).
    offset = (-scale * zero_point).astype(np.float32).reshape(_channel_shape(scale.size, len(shape)))
    inits.append(numpy_helper.from_array(offset, f"{prefix}_offset"))
    nodes = [helper.make_node("DequantizeLinear", [i.name for i in inits[:3]], [f"{prefix}_scaled"],
                              name=f"{prefix}_dq", **attrs),
             helper.make_node("Add", [f"{prefix}_scaled", f"{prefix}_offset"], [output], name=f"{prefix}_offset_add")]
    return nodes, inits, len(raw), grid_bytes + offset.nbytes


def _code_tables(bits: int) -> dict[str, np.ndarray]:
    """Per-width constants of the unpacking subgraph (shared by every layer of that width)."""
    starts = [k * bits for k in range(8)]
    lo = np.array([s // 8 for s in starts], np.int64)
    spills = [(s % 8) + bits > 8 for s in starts]
    return {
        "lo": lo,
        "hi": np.array([min(s // 8 + 1, bits - 1) for s in starts], np.int64),
        "hi_weight": np.array([256 if sp else 0 for sp in spills], np.int32),
        "divisor": np.array([1 << (s % 8) for s in starts], np.int32),
        "levels": np.array(1 << bits, np.int32),
    }


def bitstream_nodes(prefix: str, packed, output: str, shared: dict[str, TensorProto]) -> tuple[list, list, int, int]:
    """Nodes unpacking ``packed``'s exact bit-stream to the float weight ``output``.

    ``shared`` collects the per-width constant tables (added once to the graph by
    the caller). Returns (nodes, initializers, code bytes, grid bytes).
    """
    bits, shape = packed.bits, tuple(packed.weight_shape)
    numel = math.prod(shape)
    raw = packed.packed_weight.numpy().tobytes()
    groups = math.ceil(numel / 8)
    tables = {}
    for key, value in _code_tables(bits).items():
        name = f"fxquant_bitstream{bits}_{key}"
        shared.setdefault(name, numpy_helper.from_array(value, name))
        tables[key] = name
    scale, zero_point, per_channel = _grid(packed, shape)
    grid_shape = _channel_shape(scale.size, len(shape)) if per_channel else [1] * len(shape)
    p = prefix
    inits = [
        _raw(f"{p}_bitstream", TensorProto.UINT8, [len(raw)], raw),
        numpy_helper.from_array(np.array([0, groups * bits - len(raw)], np.int64), f"{p}_pad"),
        numpy_helper.from_array(np.array([groups, bits], np.int64), f"{p}_groups"),
        numpy_helper.from_array(np.array([groups * 8], np.int64), f"{p}_flat"),
        numpy_helper.from_array(np.array([0], np.int64), f"{p}_start"),
        numpy_helper.from_array(np.array([numel], np.int64), f"{p}_end"),
        numpy_helper.from_array(np.array(shape, np.int64), f"{p}_shape"),
        numpy_helper.from_array(zero_point.reshape(grid_shape), f"{p}_zero_point"),
        numpy_helper.from_array(scale.reshape(grid_shape), f"{p}_scale"),
    ]
    n = lambda op, ins, out, **kw: helper.make_node(op, ins, [out], **kw)  # noqa: E731
    nodes = [
        n("Cast", [f"{p}_bitstream"], f"{p}_i32", to=TensorProto.INT32),
        n("Pad", [f"{p}_i32", f"{p}_pad"], f"{p}_padded"),
        n("Reshape", [f"{p}_padded", f"{p}_groups"], f"{p}_table"),
        n("Gather", [f"{p}_table", tables["lo"]], f"{p}_lo", axis=1),
        n("Gather", [f"{p}_table", tables["hi"]], f"{p}_hi", axis=1),
        n("Mul", [f"{p}_hi", tables["hi_weight"]], f"{p}_hi_shifted"),
        n("Add", [f"{p}_lo", f"{p}_hi_shifted"], f"{p}_word"),
        n("Div", [f"{p}_word", tables["divisor"]], f"{p}_aligned"),
        n("Mod", [f"{p}_aligned", tables["levels"]], f"{p}_codes8"),
        n("Reshape", [f"{p}_codes8", f"{p}_flat"], f"{p}_codes_flat"),
        n("Slice", [f"{p}_codes_flat", f"{p}_start", f"{p}_end"], f"{p}_codes_n"),
        n("Reshape", [f"{p}_codes_n", f"{p}_shape"], f"{p}_codes"),
        n("Cast", [f"{p}_codes"], f"{p}_codes_f", to=TensorProto.FLOAT),
        n("Sub", [f"{p}_codes_f", f"{p}_zero_point"], f"{p}_centred"),
        n("Mul", [f"{p}_centred", f"{p}_scale"], output),
    ]
    return nodes, inits, len(raw), zero_point.nbytes + scale.nbytes
