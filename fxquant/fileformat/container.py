"""The ``.fxq`` byte container: preamble, checksummed JSON header, tensor table and data section.

This module knows bytes, not models: :func:`pack_tensors` lays a ``state_dict``
out as a tensor table and a data section, :func:`write_container` writes a
header and that data atomically, :func:`read_container` reads a file back with
every integrity check, and :func:`unpack_tensors` turns the data section into
tensors. What the header says about the model (and how ``fxquant.load``
rebuilds it) is :mod:`fxquant.fileformat.header` and :mod:`fxquant.fileformat.saveload`.

File layout, format version 1 (integers little-endian)::

    offset    size  content
    0         8     magic b"FXQUANT\\0"
    8         4     u32 format version
    12        8     u64 header length H
    20        H     header: a UTF-8 JSON object
    20+H      32    sha256 of bytes [0, 20+H): magic, version, length and header
    52+H      D     data: raw tensor bytes, D = header["data"]["nbytes"]
    52+H+D          end of file (trailing bytes are an error)

``header["data"]`` also holds the sha256 of the data section. Each entry of
``header["tensors"]`` describes one stored tensor: the ``state_dict`` keys that
share it (tied weights are stored once), its ``dtype`` (one of
:data:`DTYPES`), ``shape``, ``offset`` (from the start of the data section, a
multiple of 8) and ``nbytes``. Tensor bytes are C-contiguous, little-endian.

Versioning: a reader accepts format versions 1..:data:`FORMAT_VERSION` and
refuses newer ones. Adding header keys (readers ignore unknown keys) does not
change the version; any change an older reader would misread does.

Safety: reading uses only ``struct``, ``json``, ``hashlib`` and
``torch.frombuffer`` on raw bytes; there is no unpickling and no ``torch.load``.
Truncated, corrupted, foreign or newer-format files raise
:class:`FxqFormatError` naming the problem. The full specification is in
``docs/file_format.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
from pathlib import Path

import torch

from fxquant._version import __version__

__all__ = ["FxqFormatError", "MAGIC", "FORMAT_VERSION", "FRAMING_BYTES", "DTYPES", "DTYPE_NAMES", "KINDS",
           "MAX_MESSAGE", "MAX_INT", "bounded", "check_fields", "tensor_identity", "pack_tensors",
           "write_container", "read_container", "check_tensors", "check_finite", "unpack_tensors"]

MAGIC = b"FXQUANT\0"
FORMAT_VERSION = 1
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_PREAMBLE = struct.Struct("<8sIQ")  # magic, format version, header length
_DIGEST = 32  # sha256
_MAX_DIMS = 16
#: Bytes of a file outside its JSON header and its data section (preamble + header digest).
FRAMING_BYTES = _PREAMBLE.size + _DIGEST
_ALIGN = 8
MAX_MESSAGE = 500  # characters of an error message: a crafted field must not make a 300 KB message
MAX_INT = 2**63 - 1  # JSON integers beyond int64 are refused (no field needs them; 10**400 overflows floats)


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to at most ``limit`` characters (marked with an ellipsis and the original length)."""
    text = str(text)
    if len(text) <= limit:
        return text
    tail = f"... [{len(text):,} characters]"
    return text[:max(0, limit - len(tail))] + tail


class FxqFormatError(ValueError):
    """A file ``fxquant.load`` cannot use, or a model it does not fit.

    ``reason`` says which: ``"foreign"`` (not an fxquant file), ``"truncated"``,
    ``"checksum"`` (corrupted bytes), ``"version"`` (a newer format version),
    ``"header"`` (a malformed header or tensor table in a file whose checksums
    match: crafted, or written by a faulty tool) or ``"architecture"`` (the
    model given to ``load`` is not the saved architecture).
    """

    def __init__(self, message: str, reason: str = "header"):
        super().__init__(bounded(message))
        self.reason = reason


# ----------------------------------------------------------------------------- write


def tensor_identity(tensor: torch.Tensor):
    """Tensors with equal identity are the same memory (tied); empty tensors are never tied."""
    if tensor.numel() == 0:
        return ("empty", id(tensor))
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.dtype,
            tuple(tensor.shape), tuple(tensor.stride()))


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def pack_tensors(state: dict) -> tuple[list[dict], list[bytes], dict]:
    """Lay out a ``state_dict``: ``(header["tensors"], data section chunks, header["data"])``.

    Tied tensors (same memory) are stored once, under all their keys; each
    tensor starts at a multiple of 8 bytes.
    """
    entries: dict = {}  # identity -> tensor entry
    chunks: list[bytes] = []
    offset = 0
    data_hash = hashlib.sha256()
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"fxquant.save: state_dict entry {key!r} is a {type(tensor).__name__}, not a "
                             "tensor; only tensors can be stored")
        if tensor.dtype not in DTYPE_NAMES:
            raise ValueError(f"fxquant.save: tensor {key!r} has dtype {tensor.dtype}; supported dtypes are "
                             f"{sorted(DTYPES)}")
        ident = tensor_identity(tensor)
        if ident in entries:
            entries[ident]["keys"].append(key)
            continue
        raw = _tensor_bytes(tensor)
        entries[ident] = {"keys": [key], "dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                          "offset": offset, "nbytes": len(raw)}
        pad = -len(raw) % _ALIGN
        for piece in (raw, b"\0" * pad):
            chunks.append(piece)
            data_hash.update(piece)
        offset += len(raw) + pad
    return list(entries.values()), chunks, {"nbytes": offset, "sha256": data_hash.hexdigest(), "alignment": _ALIGN}


def write_container(path: str | os.PathLike, header: dict, chunks: list[bytes]) -> int:
    """Write the preamble, ``header`` (JSON), its checksum and the data ``chunks``; returns the file size.

    The file is written to a temporary name next to ``path`` and renamed, so a
    failed write never leaves a partial file behind.
    """
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    pre = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(head))
    digest = hashlib.sha256(pre + head).digest()

    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(pre)
            f.write(head)
            f.write(digest)
            for piece in chunks:
                f.write(piece)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(pre) + len(head) + len(digest) + sum(len(piece) for piece in chunks)


# ----------------------------------------------------------------------------- read


def _foreign_hint(start: bytes) -> str:
    if start.startswith(b"PK\x03\x04"):
        return " (it is a zip archive, e.g. a torch.save file; fxquant.load reads only files written by " \
               "fxquant.save)"
    if start[:1] == b"\x80":
        return " (it looks like a pickle; fxquant.load never unpickles)"
    return ""


def _unique_keys(pairs: list) -> dict:
    """``object_pairs_hook`` refusing a key given twice (``json`` would keep the last one silently)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise FxqFormatError(f"malformed header: the JSON key {key!r} appears twice in one object", "header")
        out[key] = value
    return out


def _bounded_int(text: str) -> int:
    value = int(text) if len(text) <= 20 else MAX_INT + 1  # never convert thousands of digits
    if abs(value) > MAX_INT:
        raise FxqFormatError(f"malformed header: the JSON integer {text[:20]}... ({len(text)} digits) is "
                             "outside the int64 range", "header")
    return value


def parse_json(head: bytes, where: str):
    """The header's JSON value: duplicate keys, integers beyond int64 and floats beyond float64 refused."""
    try:
        return json.loads(head.decode("utf-8"), object_pairs_hook=_unique_keys, parse_int=_bounded_int)
    except FxqFormatError as e:
        raise FxqFormatError(f"{where}: {e}", e.reason) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FxqFormatError(f"{where}: the header is not valid UTF-8 JSON: {e}", "header") from None


def read_container(path, *, with_data: bool = True) -> tuple[dict, bytearray | None]:
    """The checksummed header (parsed JSON object) and the data section of an fxquant file.

    With ``with_data=False`` only the preamble and header are read and checked
    (the header has its own sha256; the data section's length is checked
    against the file size, its bytes and checksum are not read): the data is
    then ``None``.
    """
    where = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pre = f.read(_PREAMBLE.size)
        if pre[:len(MAGIC)] != MAGIC[:len(pre)]:
            raise FxqFormatError(f"{where}: not an fxquant file: it starts with {pre[:8]!r}, expected the "
                                 f"magic {MAGIC!r}{_foreign_hint(pre)}", "foreign")
        if len(pre) < _PREAMBLE.size:
            raise FxqFormatError(f"{where}: truncated: {size} bytes, shorter than the {_PREAMBLE.size}-byte "
                                 "preamble (magic, version, header length)", "truncated")
        _, version, head_len = _PREAMBLE.unpack(pre)
        if version > FORMAT_VERSION:
            raise FxqFormatError(f"{where}: written in file format version {version}, newer than the "
                                 f"version {FORMAT_VERSION} this fxquant {__version__} reads; upgrade fxquant",
                                 "version")
        if version < 1:
            raise FxqFormatError(f"{where}: invalid format version {version} (corrupted preamble)", "header")
        need = _PREAMBLE.size + head_len + _DIGEST
        if size < need:
            raise FxqFormatError(f"{where}: truncated: the header needs {need} bytes but the file has only "
                                 f"{size} (or the header length is corrupted)", "truncated")
        head = f.read(head_len)
        digest = f.read(_DIGEST)
        if hashlib.sha256(pre + head).digest() != digest:
            raise FxqFormatError(f"{where}: header checksum mismatch: the file is corrupted", "checksum")
        header = parse_json(head, where)
        if not isinstance(header, dict):
            raise FxqFormatError(f"{where}: the header is a JSON {type(header).__name__}, not an object",
                                 "header")
        if header.get("format_version") != version:
            raise FxqFormatError(f"{where}: the header's format_version {header.get('format_version')!r:.20} "
                                 f"differs from the preamble's {version}", "header")
        data_info = check_fields(header, {"data": "dict"}, "header")["data"]
        data_info = check_fields(data_info, {"nbytes": "int", "sha256": "str"}, "header.data")
        nbytes = data_info["nbytes"]
        if nbytes < 0:
            raise FxqFormatError(f"{where}: header.data.nbytes is negative ({nbytes})", "header")
        if size < need + nbytes:
            raise FxqFormatError(f"{where}: truncated: the file has {size} bytes, the header describes "
                                 f"{need + nbytes}", "truncated")
        if size > need + nbytes:
            raise FxqFormatError(f"{where}: {size - need - nbytes} unexpected bytes after the data section "
                                 "(corrupted or concatenated file)", "checksum")
        if not with_data:
            return header, None
        data = bytearray(nbytes)
        if f.readinto(data) != nbytes:
            raise FxqFormatError(f"{where}: truncated while reading the data section", "truncated")
    if hashlib.sha256(data).hexdigest() != data_info["sha256"]:
        raise FxqFormatError(f"{where}: data checksum mismatch: the tensor bytes are corrupted", "checksum")
    return header, data


KINDS = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "num": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
    "[int]": lambda v: isinstance(v, list) and all(KINDS["int"](x) for x in v),
    "[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}


def check_fields(obj, spec: dict[str, str], where: str) -> dict:
    """Check ``obj`` has every field of ``spec`` with its kind (``?kind``: may be null).

    Returns those fields; other keys are ignored (newer writers may add some).
    """
    if not isinstance(obj, dict):
        raise FxqFormatError(f"malformed header: {where} should be an object, got {type(obj).__name__}",
                             "header")
    out = {}
    for key, kind in spec.items():
        if key not in obj:
            raise FxqFormatError(f"malformed header: {where} has no field {key!r}", "header")
        value = obj[key]
        optional = kind.startswith("?")
        if not ((optional and value is None) or KINDS[kind.lstrip("?")](value)):
            raise FxqFormatError(f"malformed header: {where}.{key} should be {kind.lstrip('?')}"
                                 f"{' or null' if optional else ''}, got {value!r:.60}", "header")
        out[key] = value
    return out


def check_tensors(entries: list, data_nbytes: int) -> list[dict]:
    """The validated ``header["tensors"]``: keys, dtypes, sizes and offsets that fit the data section."""
    seen: set[str] = set()
    out = []
    for i, raw in enumerate(entries):
        t = check_fields(raw, {"keys": "[str]", "dtype": "str", "shape": "[int]", "offset": "int",
                               "nbytes": "int"}, f"header.tensors[{i}]")
        label = f"tensor {t['keys'][0]!r}" if t["keys"] else f"header.tensors[{i}]"
        if not t["keys"]:
            raise FxqFormatError(f"malformed header: {label} names no state_dict key", "header")
        if len(set(t["keys"])) != len(t["keys"]):
            raise FxqFormatError(f"malformed header: {label} lists a state_dict key twice", "header")
        dup = next((k for k in t["keys"] if k in seen), None)
        if dup is not None:
            raise FxqFormatError(f"malformed header: state_dict key {dup!r} is stored twice", "header")
        seen.update(t["keys"])
        if t["dtype"] not in DTYPES:
            raise FxqFormatError(f"malformed header: {label} has dtype {t['dtype']!r}, not one of "
                                 f"{sorted(DTYPES)}", "header")
        if any(s < 0 for s in t["shape"]) or len(t["shape"]) > _MAX_DIMS:
            raise FxqFormatError(f"malformed header: {label} has a negative dimension or more than {_MAX_DIMS} "
                                 f"dimensions: {t['shape']}", "header")
        numel = 1
        for s in t["shape"]:
            numel *= s
        itemsize = DTYPES[t["dtype"]].itemsize
        if t["nbytes"] != numel * itemsize:
            raise FxqFormatError(f"malformed header: {label} of shape {t['shape']} and dtype {t['dtype']} "
                                 f"needs {numel * itemsize} bytes, the header says {t['nbytes']}", "header")
        if t["offset"] < 0 or t["offset"] % _ALIGN or t["offset"] + t["nbytes"] > data_nbytes:
            raise FxqFormatError(f"malformed header: {label} at offset {t['offset']} (+{t['nbytes']} bytes) "
                                 f"is misaligned or outside the {data_nbytes}-byte data section", "header")
        out.append(t)
    # Two entries over the same bytes would make one tensor an alias of another the writer never tied.
    spans = sorted((t["offset"], t["offset"] + t["nbytes"], t["keys"][0]) for t in out if t["nbytes"])
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise FxqFormatError(f"malformed header: the bytes of tensors {first!r} and {second!r} overlap in "
                                 "the data section", "header")
    return out


_FINITE_SUFFIXES = ("weight", "bias", "weight_scale", "weight_zero_point", "running_mean", "running_var")


def check_finite(values: dict[str, torch.Tensor]) -> None:
    """Refuse what the writer never stores: NaN anywhere; inf in weights, biases, scales, zero points and
    norm statistics (other buffers, e.g. attention masks, may hold ±inf); negative variances; scales <= 0."""
    for key, tensor in values.items():
        if not tensor.is_floating_point() or not tensor.numel():
            continue
        strict = key.endswith(_FINITE_SUFFIXES)
        if bool(torch.isnan(tensor).any()) or (strict and not bool(torch.isfinite(tensor).all())):
            raise FxqFormatError(f"malformed data: tensor {key!r} holds NaN or infinite values (fxquant.save "
                                 "never writes them)", "header")
        if key.endswith("running_var") and bool((tensor < 0).any()):
            raise FxqFormatError(f"malformed data: tensor {key!r} holds a negative variance", "header")
        if key.endswith("weight_scale") and bool((tensor <= 0).any()):
            raise FxqFormatError(f"malformed data: tensor {key!r} holds a scale <= 0", "header")


def unpack_tensors(table: list[dict], data: bytearray) -> dict[str, torch.Tensor]:
    """``{state_dict key: tensor}`` viewing ``data`` (no copy) as the checked ``table`` describes."""
    values = {}
    for entry in table:
        dtype = DTYPES[entry["dtype"]]
        if entry["nbytes"] == 0:
            tensor = torch.empty(entry["shape"], dtype=dtype)
        else:
            raw = torch.frombuffer(data, dtype=torch.uint8, count=entry["nbytes"], offset=entry["offset"])
            if dtype == torch.bool and bool((raw > 1).any()):
                raise FxqFormatError(f"malformed data: bool tensor {entry['keys'][0]!r} holds bytes other "
                                     "than 0 and 1", "header")
            tensor = raw.view(dtype).reshape(entry["shape"])
        for key in entry["keys"]:
            values[key] = tensor
    return values
