"""The model header of a ``.fxq`` file: what ``fxquant.save`` records and ``fxquant.load`` trusts.

:func:`build_header` describes a compressed GraphModule: the bit-width of every
layer, the quantizer settings, the leaf modules, the architecture's
fingerprint (module signatures and the graph's code), the per-layer
annotations, the search summary and the report. :func:`parse_header` checks
the type and range of every field of a header read back and returns a
:class:`SavedModel`. The byte container around the header is
:mod:`fxquant.fileformat.container`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import torch
from torch import fx, nn

from fxquant._version import __version__
from fxquant.nn.attention import QuantMultiheadAttention
from fxquant.core.config import QuantConfig, is_bit_width
from fxquant.fileformat.container import FORMAT_VERSION, KINDS, FxqFormatError, check_fields, check_tensors
from fxquant.nn.modules import is_quantized_module
from fxquant.reporting.report import report
from fxquant.schema import LayerInfo
from fxquant.schema import FrontierPoint, LayerDecision, SearchConfig, SearchResult

__all__ = ["build_header", "report_dict", "check_metadata", "quant_modules", "module_signatures", "SavedModel",
           "parse_header", "parse_header_at"]


# ----------------------------------------------------------------------------- write


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


def quant_modules(gm: nn.Module) -> dict[str, str]:
    """``{path: class}`` of the quantized modules (a custom ``mapping`` shows up here)."""
    return {name: f"{type(m).__module__}.{type(m).__qualname__}" for name, m in gm.named_modules()
            if is_quantized_module(m) or isinstance(m, QuantMultiheadAttention)}


def module_signatures(gm: nn.Module) -> list[str]:
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


def _json_shaped(value):
    return json.loads(json.dumps(value))


def check_metadata(metadata) -> dict | None:
    """``metadata`` as stored in the header: None, or a JSON object (str keys, JSON values)."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise ValueError(f"fxquant.save: metadata must be a dict with str keys (or None), got "
                         f"{type(metadata).__name__}")
    try:
        return _json_shaped(metadata)
    except (TypeError, ValueError) as e:
        raise ValueError(f"fxquant.save: metadata must hold only JSON values (str, numbers, bool, None, "
                         f"lists, dicts): {e}") from None


def _report_dict(qmodel: fx.GraphModule, search: SearchResult | None) -> dict:
    """The report, its frontier left to ``search.frontier`` (the same points: a second copy was
    a quarter of a small model's file); :func:`report_dict` puts it back."""
    rep = _json_shaped(report(qmodel).to_dict())
    if search is not None and search.frontier and rep.get("frontier"):
        rep["frontier"] = "search"
    return rep


def report_dict(header: dict) -> dict:
    """``header["report"]`` with its frontier (stored once, under ``search``) filled in."""
    rep = dict(header["report"])
    if rep.get("frontier") == "search":
        search = header.get("search")
        rep["frontier"] = search.get("frontier") if isinstance(search, dict) else None
    return rep


def build_header(qmodel: fx.GraphModule, infos: list[LayerInfo], bits: dict, search: SearchResult | None,
                 metadata: dict | None, tensors: list[dict], data: dict) -> dict:
    """The JSON header of ``qmodel``; ``tensors`` and ``data`` come from :func:`fxquant.fileformat.container.pack_tensors`."""
    return {
        "format": "fxquant",
        "format_version": FORMAT_VERSION,
        "fxquant_version": __version__,
        "torch_version": torch.__version__,
        "model": {
            "class": type(qmodel).__name__,
            "graph_sha256": hashlib.sha256(qmodel.code.encode()).hexdigest(),
            "modules": module_signatures(qmodel),
            "training": [name for name, m in qmodel.named_modules() if m.training],
            "leaf_modules": _leaf_modules(qmodel),
            "quant_modules": quant_modules(qmodel),
        },
        "bits": bits,
        "quant_config": _quant_config(qmodel, search),
        "layer_infos": [_json_shaped(dataclasses.asdict(info)) for info in infos],
        "search": None if search is None else _json_shaped(dataclasses.asdict(search)),
        "report": _report_dict(qmodel, search),
        "metadata": metadata,
        "tensors": tensors,
        "data": data,
    }


# ----------------------------------------------------------------------------- read


_LAYER_INFO_SPEC = {"name": "str", "kind": "str", "order": "int", "shape": "[int]", "params": "int",
                    "n_p": "num", "variance": "num", "n_v": "num", "importance": "num", "bits": "?int",
                    "margin": "?num", "accuracy": "?num", "candidates_tried": "[int]"}
_DECISION_SPEC = {"name": "str", "importance": "num", "margin": "num", "threshold": "num", "tried": "list",
                  "bits": "int", "accuracy": "num"}
_SEARCH_SPEC = {"bits": "dict", "decisions": "list", "float_value": "num", "baseline_value": "num",
                "final_value": "num", "oracle_calls": "int", "layer_forwards": "int", "seconds": "num",
                "evaluation": "str", "config": "dict"}


@dataclasses.dataclass
class SavedModel:
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
        d = {"binary_scale": "max", **d}  # files written before binary_scale existed used max|w| at 1 bit
        return QuantConfig(**{k: v for k, v in d.items() if k in known})
    except (TypeError, ValueError, OverflowError) as e:
        raise FxqFormatError(f"malformed header: invalid quantizer settings: {e}", "header") from None


def _search_from(d: dict) -> SearchResult:
    s = check_fields(d, _SEARCH_SPEC, "header.search")
    for name, b in s["bits"].items():
        if not KINDS["int"](b):
            raise FxqFormatError(f"malformed header: header.search.bits[{name!r}] should be int", "header")
    decisions = []
    for i, raw in enumerate(s["decisions"]):
        dec = check_fields(raw, _DECISION_SPEC, f"header.search.decisions[{i}]")
        tried = []
        for t in dec["tried"]:
            if not (isinstance(t, list) and len(t) == 3 and KINDS["int"](t[0]) and KINDS["num"](t[1])
                    and KINDS["bool"](t[2])):
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
    except (TypeError, ValueError, OverflowError) as e:
        raise FxqFormatError(f"malformed header: invalid search settings: {e}", "header") from None
    return SearchResult(bits=dict(s["bits"]), decisions=tuple(decisions), float_value=s["float_value"],
                        baseline_value=s["baseline_value"], final_value=s["final_value"],
                        oracle_calls=s["oracle_calls"], layer_forwards=s["layer_forwards"],
                        seconds=s["seconds"], evaluation=s["evaluation"], config=config,
                        **_sensitivity_from(d))


def _sensitivity_from(d: dict) -> dict:
    """The sensitivity search's fields (absent from files of the paper's search and older files)."""
    out = {}
    try:
        if "method" in d:
            out["method"] = str(d["method"])
        if d.get("sensitivity"):
            out["sensitivity"] = {str(name): {int(b): float(v) for b, v in per.items()}
                                  for name, per in d["sensitivity"].items()}
        if d.get("frontier"):
            known = {f.name for f in dataclasses.fields(FrontierPoint)}  # newer writers may add keys
            out["frontier"] = tuple(FrontierPoint(**{k: v for k, v in p.items() if k in known})
                                    for p in d["frontier"])
    except (AttributeError, TypeError, ValueError) as e:
        raise FxqFormatError(f"malformed header: header.search sensitivity/frontier: {e}", "header") from None
    return out


def parse_header(header: dict) -> SavedModel:
    """Check every field of a header read by :func:`fxquant.fileformat.container.read_container`; raises FxqFormatError."""
    top = check_fields(header, {"format": "str", "format_version": "int", "fxquant_version": "str",
                                "torch_version": "str", "model": "dict", "bits": "dict", "quant_config": "dict",
                                "layer_infos": "list", "search": "?dict", "tensors": "list", "data": "dict"},
                       "header")
    if top["format"] != "fxquant":
        raise FxqFormatError(f"malformed header: format is {top['format']!r}, expected 'fxquant'", "header")
    if not isinstance(header.get("metadata"), (dict, type(None))):  # optional: older files have none
        raise FxqFormatError("malformed header: header.metadata should be an object or null", "header")
    model = check_fields(top["model"], {"class": "str", "graph_sha256": "str", "modules": "[str]",
                                        "training": "[str]", "leaf_modules": "[str]", "quant_modules": "dict"},
                         "header.model")
    if not all(isinstance(v, str) for v in model["quant_modules"].values()):
        raise FxqFormatError("malformed header: header.model.quant_modules values should be class names",
                             "header")
    bits = top["bits"]
    for name, b in bits.items():
        if b is not None and not is_bit_width(b):
            raise FxqFormatError(f"malformed header: layer {name!r} has bits {b!r}, expected 1..8 or null",
                                 "header")
    infos = []
    for i, raw in enumerate(top["layer_infos"]):
        f = check_fields(raw, _LAYER_INFO_SPEC, f"header.layer_infos[{i}]")
        infos.append(LayerInfo(**{**f, "shape": tuple(f["shape"]),
                                  "candidates_tried": tuple(f["candidates_tried"])}))
    if [i.name for i in infos] != list(bits) or any(i.bits != bits[i.name] for i in infos):
        raise FxqFormatError("malformed header: header.layer_infos and header.bits disagree", "header")
    return SavedModel(
        header=header, model_class=model["class"], graph_sha256=model["graph_sha256"],
        modules=list(model["modules"]), training=set(model["training"]), leaf_modules=list(model["leaf_modules"]),
        quant_modules=dict(model["quant_modules"]), bits=dict(bits),
        quant=_quant_config_from(top["quant_config"]), infos=infos,
        search=None if top["search"] is None else _search_from(top["search"]),
        tensors=check_tensors(top["tensors"], top["data"]["nbytes"]),
    )


def parse_header_at(header: dict, path) -> SavedModel:
    """:func:`parse_header`, with ``path`` at the start of any error message.

    Whatever a crafted header holds, the only exception is :class:`FxqFormatError`.
    """
    try:
        return parse_header(header)
    except FxqFormatError as e:
        raise FxqFormatError(f"{os.fspath(path)}: {e}", e.reason) from None
    except (KeyError, IndexError, AttributeError, TypeError, ValueError, OverflowError, RecursionError) as e:
        # A combination of fields the checks above did not foresee: still a malformed header.
        raise FxqFormatError(f"{os.fspath(path)}: malformed header: {type(e).__name__}: {e}", "header") from e
