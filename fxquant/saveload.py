"""Save and load compressed models as one self-contained file, without pickle.

``save(qmodel, path)`` writes the packed weight bytes, scales and zero points,
every other tensor of the ``state_dict`` (biases, norm parameters and buffers,
float layers) as it is, and a JSON header describing how to rebuild the model:
the bit-width of every layer, the quantizer settings, the leaf modules, the
per-layer annotations and the search summary (so ``fxquant.report`` of the
loaded model equals that of the saved one). ``load(path, model)`` re-runs
``fxquant.quantize`` on an uncompressed instance of the same architecture (its
weights are irrelevant) and fills every tensor from the file: the result
computes bit-identical outputs.

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
Every header field is type- and range-checked. Truncated, corrupted, foreign
or newer-format files, and models whose architecture does not match the file,
raise :class:`FxqFormatError` naming the problem. The full specification is in
``docs/file_format.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import secrets
import struct
import sys
import warnings
from pathlib import Path

import torch
from torch import fx, nn

import passes
from fxquant._version import __version__
from fxquant.api import quantize
from fxquant.attention import QuantMultiheadAttention
from fxquant.config import QuantConfig
from fxquant.modules import is_quantized_module
from fxquant.reporting import report
from passes.importance import LayerInfo
from passes.search import LayerDecision, SearchConfig, SearchResult

__all__ = ["save", "load", "read_header", "FxqFormatError", "MAGIC", "FORMAT_VERSION", "DTYPES"]

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
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_PREAMBLE = struct.Struct("<8sIQ")  # magic, format version, header length
_DIGEST = 32  # sha256
_ALIGN = 8


class FxqFormatError(ValueError):
    """A file ``fxquant.load`` cannot use, or a model it does not fit.

    ``reason`` says which: ``"foreign"`` (not an fxquant file), ``"truncated"``,
    ``"checksum"`` (corrupted bytes), ``"version"`` (a newer format version),
    ``"header"`` (a malformed header or tensor table in a file whose checksums
    match: crafted, or written by a faulty tool) or ``"architecture"`` (the
    model given to ``load`` is not the saved architecture).
    """

    def __init__(self, message: str, reason: str = "header"):
        super().__init__(message)
        self.reason = reason


# ----------------------------------------------------------------------------- save


def _layer_module_bits(gm: fx.GraphModule, name: str) -> int | None:
    """Bits of the packed module that holds layer ``name`` in a rewritten graph (None: float)."""
    for path in (name, f"{name}_packed"):  # module / bare-parameter layers; attention projections
        try:
            module = gm.get_submodule(path)
        except AttributeError:
            continue
        if is_quantized_module(module):
            return module.bits
    return None


def _leaf_modules(gm: fx.GraphModule) -> list[str]:
    """Submodules the trace kept whole (by request or by fallback): needed to retrace identically."""
    default = fx.Tracer()
    leaves = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target in leaves:
            continue
        module = gm.get_submodule(node.target)
        if is_quantized_module(module) or isinstance(module, nn.MultiheadAttention):
            continue  # these replaced torch.nn leaves
        if not default.is_leaf_module(module, node.target):
            leaves.append(node.target)
    return leaves


def _quant_config(gm: fx.GraphModule, search) -> dict:
    if search is not None:
        return dataclasses.asdict(search.config.quant)
    # fxquant.quantize does not record its config; only the granularity shapes the buffers.
    per_tensor = any(is_quantized_module(m) and m.weight_scale.numel() == 1 and m.weight_shape[0] > 1
                     for m in gm.modules())
    return {"granularity": "per_tensor" if per_tensor else "per_channel"}


def _quant_modules(gm: nn.Module) -> dict[str, str]:
    """``{path: class}`` of the quantized modules (a custom ``mapping`` shows up here)."""
    return {name: f"{type(m).__module__}.{type(m).__qualname__}" for name, m in gm.named_modules()
            if is_quantized_module(m) or isinstance(m, QuantMultiheadAttention)}


def _module_signatures(gm: nn.Module) -> list[str]:
    """``name=Type(settings)`` of every submodule; with the graph's code, the architecture's fingerprint.

    The settings (``extra_repr``) are included for torch.nn and fxquant modules
    only, whose ``extra_repr`` never depends on weight values.
    """
    out = []
    for name, module in gm.named_modules():
        if not name:
            continue  # the GraphModule itself: its forward is compared through its code
        cls = type(module)
        extra = module.extra_repr() if cls.__module__.startswith(("torch.nn", "fxquant")) else ""
        out.append(f"{name}={cls.__module__}.{cls.__qualname__}({extra})")
    return out


def _identity(tensor: torch.Tensor):
    """Tensors with equal identity are the same memory (tied); empty tensors are never tied."""
    if tensor.numel() == 0:
        return ("empty", id(tensor))
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.dtype,
            tuple(tensor.shape), tuple(tensor.stride()))


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _json_shaped(value):
    return json.loads(json.dumps(value))


def save(qmodel: fx.GraphModule, path: str | os.PathLike) -> int:
    """Write ``qmodel`` (from ``fxquant.quantize``/``fxquant.compress``) to ``path``; returns the file size.

    The file is written to a temporary name next to ``path`` and renamed, so a
    failed save never leaves a partial file behind.
    """
    if sys.byteorder != "little":
        raise ValueError("fxquant.save: big-endian hosts are not supported by format version 1")
    if not isinstance(qmodel, fx.GraphModule):
        raise ValueError(f"fxquant.save expects the GraphModule returned by fxquant.quantize or "
                         f"fxquant.compress, got {type(qmodel).__name__}")
    infos = passes.layer_infos(qmodel)
    if not infos:
        raise ValueError("fxquant.save: this GraphModule carries no fxquant annotations; pass the model "
                         "returned by fxquant.quantize or fxquant.compress")
    bits = {}
    for info in infos:
        held = _layer_module_bits(qmodel, info.name)
        if held != info.bits:
            raise ValueError(f"fxquant.save: layer {info.name!r} is annotated with {info.bits} bits but its "
                             f"module holds {held if held is not None else 'a float weight'}")
        bits[info.name] = info.bits
    search = qmodel.meta.get("fxquant")
    if search is not None and not isinstance(search, SearchResult):
        search = None
    quant_modules = _quant_modules(qmodel)

    entries: dict = {}  # identity -> tensor entry
    chunks: list[bytes] = []
    offset = 0
    data_hash = hashlib.sha256()
    for key, tensor in qmodel.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"fxquant.save: state_dict entry {key!r} is a {type(tensor).__name__}, not a "
                             "tensor; only tensors can be stored")
        if tensor.dtype not in _DTYPE_NAMES:
            raise ValueError(f"fxquant.save: tensor {key!r} has dtype {tensor.dtype}; supported dtypes are "
                             f"{sorted(DTYPES)}")
        ident = _identity(tensor)
        if ident in entries:
            entries[ident]["keys"].append(key)
            continue
        raw = _tensor_bytes(tensor)
        entries[ident] = {"keys": [key], "dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                          "offset": offset, "nbytes": len(raw)}
        pad = -len(raw) % _ALIGN
        for piece in (raw, b"\0" * pad):
            chunks.append(piece)
            data_hash.update(piece)
        offset += len(raw) + pad

    header = {
        "format": "fxquant",
        "format_version": FORMAT_VERSION,
        "fxquant_version": __version__,
        "torch_version": torch.__version__,
        "model": {
            "class": type(qmodel).__name__,
            "graph_sha256": hashlib.sha256(qmodel.code.encode()).hexdigest(),
            "modules": _module_signatures(qmodel),
            "training": [name for name, m in qmodel.named_modules() if m.training],
            "leaf_modules": _leaf_modules(qmodel),
            "quant_modules": quant_modules,
        },
        "bits": bits,
        "quant_config": _quant_config(qmodel, search),
        "layer_infos": [_json_shaped(dataclasses.asdict(info)) for info in infos],
        "search": None if search is None else _json_shaped(dataclasses.asdict(search)),
        "report": _json_shaped(report(qmodel).to_dict()),
        "tensors": list(entries.values()),
        "data": {"nbytes": offset, "sha256": data_hash.hexdigest(), "alignment": _ALIGN},
    }
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
    return len(pre) + len(head) + len(digest) + offset


# ----------------------------------------------------------------------------- read


def _foreign_hint(start: bytes) -> str:
    if start.startswith(b"PK\x03\x04"):
        return " (it is a zip archive, e.g. a torch.save file; fxquant.load reads only files written by " \
               "fxquant.save)"
    if start[:1] == b"\x80":
        return " (it looks like a pickle; fxquant.load never unpickles)"
    return ""


def _read_container(path) -> tuple[dict, bytearray]:
    """The checksummed header (parsed JSON object) and the data section of an fxquant file."""
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
        try:
            header = json.loads(head.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise FxqFormatError(f"{where}: the header is not valid UTF-8 JSON: {e}", "header") from None
        if not isinstance(header, dict):
            raise FxqFormatError(f"{where}: the header is a JSON {type(header).__name__}, not an object",
                                 "header")
        if header.get("format_version") != version:
            raise FxqFormatError(f"{where}: the header's format_version {header.get('format_version')!r:.20} "
                                 f"differs from the preamble's {version}", "header")
        data_info = _fields(header, {"data": "dict"}, "header")["data"]
        data_info = _fields(data_info, {"nbytes": "int", "sha256": "str"}, "header.data")
        nbytes = data_info["nbytes"]
        if nbytes < 0:
            raise FxqFormatError(f"{where}: header.data.nbytes is negative ({nbytes})", "header")
        if size < need + nbytes:
            raise FxqFormatError(f"{where}: truncated: the file has {size} bytes, the header describes "
                                 f"{need + nbytes}", "truncated")
        if size > need + nbytes:
            raise FxqFormatError(f"{where}: {size - need - nbytes} unexpected bytes after the data section "
                                 "(corrupted or concatenated file)", "checksum")
        data = bytearray(nbytes)
        if f.readinto(data) != nbytes:
            raise FxqFormatError(f"{where}: truncated while reading the data section", "truncated")
    if hashlib.sha256(data).hexdigest() != data_info["sha256"]:
        raise FxqFormatError(f"{where}: data checksum mismatch: the tensor bytes are corrupted", "checksum")
    return header, data


_KINDS = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "num": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
    "[int]": lambda v: isinstance(v, list) and all(_KINDS["int"](x) for x in v),
    "[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}


def _fields(obj, spec: dict[str, str], where: str) -> dict:
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
        if not ((optional and value is None) or _KINDS[kind.lstrip("?")](value)):
            raise FxqFormatError(f"malformed header: {where}.{key} should be {kind.lstrip('?')}"
                                 f"{' or null' if optional else ''}, got {value!r:.60}", "header")
        out[key] = value
    return out


_LAYER_INFO_SPEC = {"name": "str", "kind": "str", "order": "int", "shape": "[int]", "params": "int",
                    "n_p": "num", "variance": "num", "n_v": "num", "importance": "num", "bits": "?int",
                    "margin": "?num", "accuracy": "?num", "candidates_tried": "[int]"}
_DECISION_SPEC = {"name": "str", "importance": "num", "margin": "num", "threshold": "num", "tried": "list",
                  "bits": "int", "accuracy": "num"}
_SEARCH_SPEC = {"bits": "dict", "decisions": "list", "float_value": "num", "baseline_value": "num",
                "final_value": "num", "oracle_calls": "int", "layer_forwards": "int", "seconds": "num",
                "evaluation": "str", "config": "dict"}


@dataclasses.dataclass
class _Saved:
    """What the header says about the saved model (validated)."""

    header: dict
    model_class: str
    graph_sha256: str
    modules: list[str]
    training: set[str]
    leaf_modules: list[str]
    quant_modules: dict[str, str]
    bits: dict[str, int | None]
    quant: QuantConfig
    infos: list[LayerInfo]
    search: SearchResult | None
    tensors: list[dict]


def _quant_config_from(d: dict) -> QuantConfig:
    known = {f.name for f in dataclasses.fields(QuantConfig)}
    try:
        return QuantConfig(**{k: v for k, v in d.items() if k in known})
    except (TypeError, ValueError) as e:
        raise FxqFormatError(f"malformed header: invalid quantizer settings: {e}", "header") from None


def _search_from(d: dict) -> SearchResult:
    s = _fields(d, _SEARCH_SPEC, "header.search")
    for name, b in s["bits"].items():
        if not _KINDS["int"](b):
            raise FxqFormatError(f"malformed header: header.search.bits[{name!r}] should be int", "header")
    decisions = []
    for i, raw in enumerate(s["decisions"]):
        dec = _fields(raw, _DECISION_SPEC, f"header.search.decisions[{i}]")
        tried = []
        for t in dec["tried"]:
            if not (isinstance(t, list) and len(t) == 3 and _KINDS["int"](t[0]) and _KINDS["num"](t[1])
                    and _KINDS["bool"](t[2])):
                raise FxqFormatError(f"malformed header: header.search.decisions[{i}].tried holds {t!r:.60}, "
                                     "expected [bits, value, complete]", "header")
            tried.append(tuple(t))
        decisions.append(LayerDecision(**{**dec, "tried": tuple(tried)}))
    cfg = dict(s["config"])
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    cfg = {k: v for k, v in cfg.items() if k in known}
    if not isinstance(cfg.get("quant", {}), dict) or not isinstance(cfg.get("candidates", []), list):
        raise FxqFormatError("malformed header: header.search.config has a malformed quant or candidates",
                             "header")
    cfg["quant"] = _quant_config_from(cfg.get("quant", {}))
    if "candidates" in cfg:
        cfg["candidates"] = tuple(cfg["candidates"])
    try:
        config = SearchConfig(**cfg)
    except (TypeError, ValueError) as e:
        raise FxqFormatError(f"malformed header: invalid search settings: {e}", "header") from None
    return SearchResult(bits=dict(s["bits"]), decisions=tuple(decisions), float_value=s["float_value"],
                        baseline_value=s["baseline_value"], final_value=s["final_value"],
                        oracle_calls=s["oracle_calls"], layer_forwards=s["layer_forwards"],
                        seconds=s["seconds"], evaluation=s["evaluation"], config=config)


def _check_tensors(entries: list, data_nbytes: int) -> list[dict]:
    seen: set[str] = set()
    out = []
    for i, raw in enumerate(entries):
        t = _fields(raw, {"keys": "[str]", "dtype": "str", "shape": "[int]", "offset": "int", "nbytes": "int"},
                    f"header.tensors[{i}]")
        label = f"tensor {t['keys'][0]!r}" if t["keys"] else f"header.tensors[{i}]"
        if not t["keys"]:
            raise FxqFormatError(f"malformed header: {label} names no state_dict key", "header")
        dup = next((k for k in t["keys"] if k in seen), None)
        if dup is not None:
            raise FxqFormatError(f"malformed header: state_dict key {dup!r} is stored twice", "header")
        seen.update(t["keys"])
        if t["dtype"] not in DTYPES:
            raise FxqFormatError(f"malformed header: {label} has dtype {t['dtype']!r}, not one of "
                                 f"{sorted(DTYPES)}", "header")
        if any(s < 0 for s in t["shape"]):
            raise FxqFormatError(f"malformed header: {label} has a negative dimension {t['shape']}", "header")
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
    return out


def _parse_header(header: dict) -> _Saved:
    top = _fields(header, {"format": "str", "format_version": "int", "fxquant_version": "str",
                           "torch_version": "str", "model": "dict", "bits": "dict", "quant_config": "dict",
                           "layer_infos": "list", "search": "?dict", "tensors": "list", "data": "dict"},
                  "header")
    if top["format"] != "fxquant":
        raise FxqFormatError(f"malformed header: format is {top['format']!r}, expected 'fxquant'", "header")
    model = _fields(top["model"], {"class": "str", "graph_sha256": "str", "modules": "[str]",
                                   "training": "[str]", "leaf_modules": "[str]", "quant_modules": "dict"},
                    "header.model")
    if not all(isinstance(v, str) for v in model["quant_modules"].values()):
        raise FxqFormatError("malformed header: header.model.quant_modules values should be class names",
                             "header")
    bits = top["bits"]
    for name, b in bits.items():
        if b is not None and not (_KINDS["int"](b) and 1 <= b <= 8):
            raise FxqFormatError(f"malformed header: layer {name!r} has bits {b!r}, expected 1..8 or null",
                                 "header")
    infos = []
    for i, raw in enumerate(top["layer_infos"]):
        f = _fields(raw, _LAYER_INFO_SPEC, f"header.layer_infos[{i}]")
        infos.append(LayerInfo(**{**f, "shape": tuple(f["shape"]),
                                  "candidates_tried": tuple(f["candidates_tried"])}))
    if [i.name for i in infos] != list(bits) or any(i.bits != bits[i.name] for i in infos):
        raise FxqFormatError("malformed header: header.layer_infos and header.bits disagree", "header")
    return _Saved(
        header=header, model_class=model["class"], graph_sha256=model["graph_sha256"],
        modules=list(model["modules"]), training=set(model["training"]), leaf_modules=list(model["leaf_modules"]),
        quant_modules=dict(model["quant_modules"]), bits=dict(bits),
        quant=_quant_config_from(top["quant_config"]), infos=infos,
        search=None if top["search"] is None else _search_from(top["search"]),
        tensors=_check_tensors(top["tensors"], top["data"]["nbytes"]),
    )


def _parse_header_at(header: dict, path) -> _Saved:
    try:
        return _parse_header(header)
    except FxqFormatError as e:
        raise FxqFormatError(f"{os.fspath(path)}: {e}", e.reason) from None


def read_header(path: str | os.PathLike) -> dict:
    """The verified JSON header of an fxquant file (versions, bits, report, tensor table); needs no model."""
    header, _ = _read_container(path)
    _parse_header_at(header, path)
    return header


# ----------------------------------------------------------------------------- load


def _mismatch(saved: _Saved, model: nn.Module, what: str) -> FxqFormatError:
    given = type(model).__name__
    note = "" if given == saved.model_class else \
        f" (the file was saved from a {saved.model_class}, the model given is a {given})"
    return FxqFormatError(f"architecture mismatch: {what}{note}", "architecture")


def _owner_of(key: str, layer_names) -> str:
    best = ""
    for name in layer_names:
        if (key.startswith(name + ".") or key.startswith(name + "_packed.")) and len(name) > len(best):
            best = name
    return f"layer {best!r}" if best else f"module {key.rpartition('.')[0] or '<root>'!r}"


def _working_copy(model: nn.Module, training: bool) -> nn.Module:
    """``model``, or a copy in the saved mode (tracing may depend on it) with finite weights.

    The weights are overwritten from the file, but ``fxquant.quantize`` refuses
    NaN/inf: non-finite tensors (e.g. from ``torch.empty``) get finite stand-ins.
    """
    tensors = [*model.named_parameters(), *model.named_buffers()]
    bad = {name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())}
    if model.training == training and not bad:
        return model  # fxquant.quantize copies it anyway
    work = copy.deepcopy(model).train(training)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in [*work.named_parameters(), *work.named_buffers()]:
            if name in bad:
                t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.dtype))
    return work


def _rebuild(saved: _Saved, model: nn.Module, mapping) -> fx.GraphModule:
    work = _working_copy(model, "" in saved.training)
    try:
        names = passes.find_layers(passes.trace(work, leaf_modules=saved.leaf_modules))
    except Exception as e:  # noqa: BLE001 - any tracing failure means the model does not fit the file
        raise _mismatch(saved, model, f"cannot trace it as saved: {type(e).__name__}: {e}") from e
    have = [layer.name for layer in names]
    missing = [n for n in saved.bits if n not in set(have)]
    if missing:
        raise _mismatch(saved, model, f"the file holds layer {missing[0]!r}, which the model does not have"
                                      + (f" ({len(missing)} such layers)" if len(missing) > 1 else "")
                                      + f"; the model's layers are {', '.join(have[:6])}"
                                      + (", ..." if len(have) > 6 else ""))
    extra = [n for n in have if n not in saved.bits]
    if extra:
        raise _mismatch(saved, model, f"the model has layer {extra[0]!r}, which the file does not hold"
                                      + (f" ({len(extra)} such layers)" if len(extra) > 1 else ""))
    if have != list(saved.bits):
        first = next(a for a, b in zip(have, saved.bits) if a != b)
        raise _mismatch(saved, model, f"the layers run in a different order (first difference at {first!r})")
    try:
        gm = quantize(work, dict(saved.bits), config=saved.quant, leaf_modules=saved.leaf_modules,
                      mapping=mapping)
    except Exception as e:  # noqa: BLE001
        raise _mismatch(saved, model, f"cannot quantize it as saved: {type(e).__name__}: {e}") from e
    rebuilt = {info.name: info for info in passes.layer_infos(gm)}
    for info in saved.infos:
        got = rebuilt[info.name]
        if got.shape != info.shape or got.kind != info.kind:
            raise _mismatch(saved, model, f"layer {info.name!r} is a {info.kind} weight of shape "
                                          f"{info.shape} in the file, a {got.kind} of shape {got.shape} in "
                                          "the model")
    got_modules = _quant_modules(gm)
    for name in sorted(set(saved.quant_modules) | set(got_modules)):
        if saved.quant_modules.get(name) != got_modules.get(name):
            raise _mismatch(saved, model, f"module {name!r} is {saved.quant_modules.get(name)} in the file "
                                          f"but {got_modules.get(name)} once rebuilt (pass the same mapping= "
                                          "as when compressing)")
    return gm


def _fill_state(saved: _Saved, gm: fx.GraphModule, model: nn.Module, data: bytearray) -> None:
    state = gm.state_dict()
    layer_names = list(saved.bits)
    stored = {key: entry for entry in saved.tensors for key in entry["keys"]}
    missing = [k for k in state if k not in stored]
    if missing:
        key = missing[0]
        raise _mismatch(saved, model, f"the model has tensor {key!r} ({_owner_of(key, layer_names)}) that the "
                                      "file does not hold")
    extra = [k for k in stored if k not in state]
    if extra:
        key = extra[0]
        raise _mismatch(saved, model, f"the file holds tensor {key!r} ({_owner_of(key, layer_names)}) that the "
                                      "model does not have")
    for key, tensor in state.items():
        entry = stored[key]
        got = _DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype))
        if got != entry["dtype"] or list(tensor.shape) != entry["shape"]:
            raise _mismatch(saved, model, f"tensor {key!r} ({_owner_of(key, layer_names)}) is {entry['dtype']} "
                                          f"{tuple(entry['shape'])} in the file, {got} {tuple(tensor.shape)} "
                                          "in the model")
    # Tied tensors: the same keys must share memory in the file and in the rebuilt model.
    by_identity: dict = {}
    for key, tensor in state.items():
        by_identity.setdefault(_identity(tensor), []).append(key)
    for keys in by_identity.values():
        for entry in {id(stored[k]): stored[k] for k in keys}.values():
            if sorted(entry["keys"]) != sorted(keys):
                a, b = sorted(set(entry["keys"]) ^ set(keys))[0], keys[0]
                raise _mismatch(saved, model, f"tensors {a!r} and {b!r} are tied in one of the file and the "
                                              "model but not in the other")
    values = {}
    for entry in saved.tensors:
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
    try:
        gm.load_state_dict(values, strict=True)
    except Exception as e:  # noqa: BLE001 - checked above; anything left is reported, not raised raw
        raise _mismatch(saved, model, f"loading the tensors failed: {type(e).__name__}: {e}") from e


def _check_graph(saved: _Saved, gm: fx.GraphModule, model: nn.Module) -> None:
    """Same modules (types and settings) and same forward code as the saved model.

    A difference is an error under the torch version that wrote the file, and a
    warning under another one (torch.fx and ``extra_repr`` output may change
    between versions).
    """
    problem = None
    got = _module_signatures(gm)
    if got != saved.modules:
        i = next((i for i, (a, b) in enumerate(zip(got, saved.modules)) if a != b),
                 min(len(got), len(saved.modules)))
        was = saved.modules[i] if i < len(saved.modules) else "(nothing)"
        now = got[i] if i < len(got) else "(nothing)"
        name = (now if i < len(got) else was).partition("=")[0]
        problem = (f"module {name!r} differs: {was.partition('=')[2]} in the file, {now.partition('=')[2]} "
                   "in the model")
    elif hashlib.sha256(gm.code.encode()).hexdigest() != saved.graph_sha256:
        problem = "the rebuilt graph's forward code differs from the saved one"
    if problem is None:
        return
    written_with = saved.header["torch_version"]
    if written_with == torch.__version__:
        raise _mismatch(saved, model, problem)
    warnings.warn(f"fxquant.load: {problem}; the file was written with torch {written_with}, this is torch "
                  f"{torch.__version__}, which may print modules and code differently", stacklevel=3)


def load(path: str | os.PathLike, model: nn.Module, *,
         mapping: dict[type, type] | None = None) -> fx.GraphModule:
    """Rebuild the compressed model saved at ``path`` onto ``model``; returns a new GraphModule.

    Args:
        path: a file written by :func:`save`. Never unpickled: untrusted files are safe to load.
        model: an uncompressed instance of the saved architecture, in any
            mode. Its weights are irrelevant (even NaN): every tensor is
            replaced by the file's. It is not modified.
        mapping: the ``mapping=`` given to ``fxquant.quantize``/``compress``, if any.

    The result computes bit-identical outputs to the saved model, has its
    training/eval modes, and ``fxquant.report(result)`` equals the saved report.

    Raises:
        FxqFormatError: the file is truncated, corrupted, not an fxquant file,
            written in a newer format version, or ``model`` is not the saved
            architecture; the message names the problem (and the layer).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fxquant.load: model must be an nn.Module, got {type(model).__name__}")
    if any(is_quantized_module(m) or isinstance(m, QuantMultiheadAttention) for m in model.modules()):
        raise ValueError("fxquant.load: model is already compressed; pass an uncompressed instance of the "
                         "saved architecture")
    if sys.byteorder != "little":
        raise ValueError("fxquant.load: big-endian hosts are not supported by format version 1")
    header, data = _read_container(path)
    saved = _parse_header_at(header, path)
    gm = _rebuild(saved, model, mapping)
    _fill_state(saved, gm, model, data)
    _check_graph(saved, gm, model)
    # The importance annotations were recomputed from ``model``'s weights: put back the saved ones.
    fields = [f.name for f in dataclasses.fields(LayerInfo)]
    passes.update_layer_infos(gm, {info.name: {f: getattr(info, f) for f in fields} for info in saved.infos})
    if saved.search is not None:
        gm.meta["fxquant"] = saved.search
    else:
        gm.meta.pop("fxquant", None)
    for name, module in gm.named_modules():
        module.training = name in saved.training
    return gm
