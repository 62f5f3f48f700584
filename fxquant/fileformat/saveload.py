"""Save and load compressed models as one self-contained file, without pickle.

``save(qmodel, path)`` writes the packed weight bytes, scales and zero points,
every other tensor of the ``state_dict`` (biases, norm parameters and buffers,
float layers) as it is, and a JSON header describing how to rebuild the model:
the bit-width of every layer, the quantizer settings, the leaf modules, the
per-layer annotations and the search summary (so ``fxquant.report`` of the
loaded model equals that of the saved one). ``load(path, model)`` re-runs the
passes (trace, find layers, rewrite at the saved widths) on an uncompressed
instance of the same architecture (its weights are irrelevant) and fills every
tensor from the file: the result computes bit-identical outputs.

The file layout, versioning and integrity checks are :mod:`fxquant.fileformat.container`;
the header's content is :mod:`fxquant.fileformat.header`. This module ties them to
models: it checks what it saves, and that the model given to ``load`` is the
saved architecture (:class:`FxqFormatError` naming the problem otherwise). The
full specification is in ``docs/file_format.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import sys
import warnings

import torch
from torch import fx, nn

from fxquant import passes
from fxquant.passes.reparam import copy_model
from fxquant.nn.attention import QuantMultiheadAttention
from fxquant.fileformat.container import (
    DTYPE_NAMES,
    DTYPES,
    FORMAT_VERSION,
    MAGIC,
    FxqFormatError,
    check_finite,
    pack_tensors,
    read_container,
    tensor_identity,
    unpack_tensors,
    write_container,
)
from fxquant.fileformat.header import (
    SavedModel,
    build_header,
    check_metadata,
    module_signatures,
    parse_header_at,
    quant_modules,
)
from fxquant.nn.modules import is_quantized_module
from fxquant.schema import LayerInfo
from fxquant.schema import SearchResult

__all__ = ["save", "load", "read_header", "FxqFormatError", "MAGIC", "FORMAT_VERSION", "DTYPES"]


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


def save(qmodel: fx.GraphModule, path: str | os.PathLike, *, metadata: dict | None = None) -> int:
    """Write ``qmodel`` (from ``fxquant.quantize``/``fxquant.compress``) to ``path``; returns the file size.

    ``metadata`` (optional, JSON values only) is stored as ``header["metadata"]``
    and returned by :func:`read_header`, e.g. how to rebuild the architecture;
    ``load`` does not use it.

    The file is written to a temporary name next to ``path`` and renamed, so a
    failed save never leaves a partial file behind.
    """
    metadata = check_metadata(metadata)
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
    tensors, chunks, data = pack_tensors(qmodel.state_dict())
    header = build_header(qmodel, infos, bits, search, metadata, tensors, data)
    return write_container(path, header, chunks)


# ----------------------------------------------------------------------------- read


def read_header(path: str | os.PathLike) -> dict:
    """The verified JSON header of an fxquant file (versions, bits, report, metadata, tensor table); needs no model.

    Reads and checks the preamble and the header only (its own sha256 and every
    field); the data section is not read, so its checksum is checked by :func:`load`.
    """
    header, _ = read_container(path, with_data=False)
    parse_header_at(header, path)
    return header


# ----------------------------------------------------------------------------- load


def _mismatch(saved: SavedModel, model: nn.Module, what: str) -> FxqFormatError:
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


def _working_copy(model: nn.Module, training: bool = False) -> nn.Module:
    """``model``, or a copy in eval mode (tracing may depend on the mode) with finite weights.

    The weights are overwritten from the file, but the quantizer refuses NaN/inf:
    non-finite tensors (e.g. from ``torch.empty``) get finite stand-ins.
    """
    tensors = [*model.named_parameters(), *model.named_buffers()]
    bad = {name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())}
    if model.training == training and not bad:
        return model  # tracing copies it anyway
    work = copy_model(model).train(training)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in [*work.named_parameters(), *work.named_buffers()]:
            if name in bad:
                t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.dtype))
    return work


def _rebuild(saved: SavedModel, model: nn.Module, mapping) -> fx.GraphModule:
    work = _working_copy(model)  # always eval: see load()
    try:
        gm = passes.trace(work, leaf_modules=saved.leaf_modules)
        layers = passes.find_layers(gm)
    except Exception as e:  # noqa: BLE001 - any tracing failure means the model does not fit the file
        raise _mismatch(saved, model, f"cannot trace it as saved: {type(e).__name__}: {e}") from e
    have = [layer.name for layer in layers]
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
    # The weights come from the file: rebuilding needs no data, whatever rounding made them.
    rebuild_cfg = dataclasses.replace(saved.quant, rounding="nearest", bias_correction=False)
    try:
        passes.annotate_importance(gm, layers=layers)
        gm = passes.rewrite(gm, dict(saved.bits), config=rebuild_cfg, mapping=mapping, layers=layers)
    except Exception as e:  # noqa: BLE001
        raise _mismatch(saved, model, f"cannot quantize it as saved: {type(e).__name__}: {e}") from e
    _add_corrected_biases(saved, gm)
    rebuilt = {info.name: info for info in passes.layer_infos(gm)}
    for info in saved.infos:
        got = rebuilt[info.name]
        if got.shape != info.shape or got.kind != info.kind:
            raise _mismatch(saved, model, f"layer {info.name!r} is a {info.kind} weight of shape "
                                          f"{info.shape} in the file, a {got.kind} of shape {got.shape} in "
                                          "the model")
    got_modules = quant_modules(gm)
    for name in sorted(set(saved.quant_modules) | set(got_modules)):
        if saved.quant_modules.get(name) != got_modules.get(name):
            raise _mismatch(saved, model, f"module {name!r} is {saved.quant_modules.get(name)} in the file "
                                          f"but {got_modules.get(name)} once rebuilt (pass the same mapping= "
                                          "as when compressing)")
    return gm


def _add_corrected_biases(saved: SavedModel, gm: fx.GraphModule) -> None:
    """Bias correction gives a bias to quantized layers that had none: give them one to load into."""
    stored = {key for entry in saved.tensors for key in entry["keys"]}
    for path, module in gm.named_modules():
        key = f"{path}.bias" if path else "bias"
        if is_quantized_module(module) and getattr(module, "bias", 0) is None and key in stored:
            module.bias = nn.Parameter(torch.zeros(module.weight_shape[0]), requires_grad=False)


def _fill_state(saved: SavedModel, gm: fx.GraphModule, model: nn.Module, data: bytearray) -> None:
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
        got = DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype))
        if got != entry["dtype"] or list(tensor.shape) != entry["shape"]:
            raise _mismatch(saved, model, f"tensor {key!r} ({_owner_of(key, layer_names)}) is {entry['dtype']} "
                                          f"{tuple(entry['shape'])} in the file, {got} {tuple(tensor.shape)} "
                                          "in the model")
    # Tied tensors: the same keys must share memory in the file and in the rebuilt model.
    by_identity: dict = {}
    for key, tensor in state.items():
        by_identity.setdefault(tensor_identity(tensor), []).append(key)
    for keys in by_identity.values():
        for entry in {id(stored[k]): stored[k] for k in keys}.values():
            if sorted(entry["keys"]) != sorted(keys):
                a, b = sorted(set(entry["keys"]) ^ set(keys))[0], keys[0]
                raise _mismatch(saved, model, f"tensors {a!r} and {b!r} are tied in one of the file and the "
                                              "model but not in the other")
    values = unpack_tensors(saved.tensors, data)
    check_finite(values)
    try:
        gm.load_state_dict(values, strict=True)
    except Exception as e:  # noqa: BLE001 - checked above; anything left is reported, not raised raw
        raise _mismatch(saved, model, f"loading the tensors failed: {type(e).__name__}: {e}") from e


def _check_graph(saved: SavedModel, gm: fx.GraphModule, model: nn.Module) -> None:
    """Same modules (types and settings) and same forward code as the saved model.

    A difference is an error under the torch version that wrote the file, and a
    warning under another one (torch.fx and ``extra_repr`` output may change
    between versions).
    """
    problem = None
    got = module_signatures(gm)
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

    The result computes bit-identical outputs to the saved model (in eval
    mode) and ``fxquant.report(result)`` equals the saved report. It is always
    in eval mode, whatever the header's ``model.training`` says: a file must not
    make BatchNorm update its statistics on every inference (call ``.train()``
    yourself to fine-tune).

    Raises:
        FxqFormatError: the file is truncated, corrupted, not an fxquant file,
            written in a newer format version, crafted (duplicate JSON keys,
            overlapping tensors, NaN/inf values, ...), or ``model`` is not the
            saved architecture; the message names the problem (and the layer).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fxquant.load: model must be an nn.Module, got {type(model).__name__}")
    if any(is_quantized_module(m) or isinstance(m, QuantMultiheadAttention) for m in model.modules()):
        raise ValueError("fxquant.load: model is already compressed; pass an uncompressed instance of the "
                         "saved architecture")
    if sys.byteorder != "little":
        raise ValueError("fxquant.load: big-endian hosts are not supported by format version 1")
    header, data = read_container(path)
    saved = parse_header_at(header, path)
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
    return gm.eval()
