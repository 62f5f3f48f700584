"""The compression tools compared in benchmarks/peers.py: how each one compresses, saves and counts.

One :class:`Tool` per table row. ``build`` compresses a copy of the float model
(with the calibration batches where the tool uses data) and reports what it
did; ``save`` writes the model the tool's own recommended way; ``quantized``
names the conv/linear layers whose weights the tool actually stores quantized.

Peers that are not installed, or that have no CPU float32 path, raise
:class:`Unavailable` from ``build`` with the reason, and the row says it.
torchao is tried on convolutions and linear layers first (what fxquant
quantizes); if that fails the row falls back to torchao's default filter
(linear layers only) and the note quotes the error.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

import fxquant
from fxquant.nn.modules import is_quantized_module

__all__ = ["Built", "Tool", "Unavailable", "TOOLS", "float_layers"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class Unavailable(RuntimeError):
    """The tool cannot produce a model here; the message says why."""


@dataclass
class Built:
    model: nn.Module
    seconds: float  # wall time of the compression call(s), calibration included
    note: str = ""
    config: str = ""  # the settings the tool ran with, when it records them


@dataclass(frozen=True)
class Tool:
    key: str
    label: str
    storage: str  # what the weights are at inference time
    build: Callable[[nn.Module, Batches, torch.Tensor], Built]
    save: Callable[[nn.Module, Path], Path]
    quantized: Callable[[nn.Module], list[str]]
    cached_of: str | None = None  # same model as another row, weight cache switched on


def float_layers(model: nn.Module) -> list[str]:
    """Names of the conv and linear layers of the float model (the denominator of 'layers quantized')."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]


def _error(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:160]}"


def _timed(fn: Callable[[], nn.Module]) -> tuple[nn.Module, float]:
    start = time.perf_counter()
    model = fn()
    return model, time.perf_counter() - start


def _smoke(model: nn.Module, example: torch.Tensor) -> None:
    with torch.inference_mode():
        model(example)


def _save_state_dict(model: nn.Module, path: Path) -> Path:
    path = path.with_suffix(".pt")
    torch.save(model.state_dict(), path)
    return path


# ----------------------------------------------------------------------------- float32


def _build_float(model, _calib, _example, stats=None) -> Built:
    return Built(copy.deepcopy(model).eval(), 0.0)


# ----------------------------------------------------------------------------- torch.ao.quantization


def _torch_ao():
    # Deprecated in favour of torchao but still shipped; silence the warning it prints on import.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization as tq
        from torch.ao.quantization import quantize_fx
    return tq, quantize_fx


def _build_ao_dynamic(model, _calib, example, stats=None) -> Built:
    tq, _ = _torch_ao()
    work = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q, seconds = _timed(lambda: tq.quantize_dynamic(work, {nn.Linear}, dtype=torch.qint8))
    _smoke(q, example)
    return Built(q, seconds, "int8 dynamic quantization applies to nn.Linear only (no conv support); its "
                             "activation range is taken per batch, so its accuracy depends on the evaluation "
                             "batch size")


def ao_fx_static_int8(model: nn.Module, calib, example: torch.Tensor, engine: str = "x86",
                      float_part: str | None = None) -> nn.Module:
    """torch.ao's FX static int8 recipe on a copy of ``model``: ``get_default_qconfig_mapping(engine)``,
    observers run over ``calib``; ``float_part`` (a module name) is left float."""
    tq, quantize_fx = _torch_ao()
    torch.backends.quantized.engine = engine
    mapping = tq.get_default_qconfig_mapping(engine)
    if float_part is not None:
        mapping = mapping.set_module_name(float_part, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = quantize_fx.prepare_fx(copy.deepcopy(model).eval(), mapping, example_inputs=(example,))
        with torch.inference_mode():
            for x, _ in calib:  # observers record activation ranges
                prepared(x)
        return quantize_fx.convert_fx(prepared)


def _build_ao_fx_static(model, calib, example, stats=None) -> Built:
    if "x86" not in torch.backends.quantized.supported_engines:
        raise Unavailable(f"no x86 quantized engine in this torch build "
                          f"({', '.join(torch.backends.quantized.supported_engines)})")
    q, seconds = _timed(lambda: ao_fx_static_int8(model, calib, example))
    _smoke(q, example)
    return Built(q, seconds, "not weight-only: activations are int8 too (observers calibrated on the "
                                "calibration images, included in the time)")


def _ao_quantized(model: nn.Module) -> list[str]:
    names = []
    for name, m in model.named_modules():
        weight = getattr(m, "weight", None)
        if callable(weight) and type(m).__module__.startswith("torch.ao.nn"):
            w = weight()
            if isinstance(w, torch.Tensor) and w.is_quantized:
                names.append(name)
    return names


# ----------------------------------------------------------------------------- torchao


def _torchao():
    try:
        import torchao
        from torchao import quantization
    except ImportError as e:
        raise Unavailable(f"torchao not installed ({_error(e)}); pip install 'fxquant[bench]'") from e
    except Exception as e:  # noqa: BLE001 - e.g. built against another torch: the row says so
        raise Unavailable(f"torchao does not import with torch {torch.__version__}: {_error(e)}") from e
    return torchao, quantization


def _conv_or_linear(module: nn.Module, _fqn: str) -> bool:
    return isinstance(module, (nn.Conv2d, nn.Linear))


def _torchao_builder(make_config: Callable) -> Callable:
    def build(model, _calib, example, stats=None) -> Built:
        _, tq = _torchao()
        attempts = [("conv+linear", _conv_or_linear), ("default filter (linear only)", None)]
        errors = []
        for what, filter_fn in attempts:
            work, config = copy.deepcopy(model).eval(), None
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    config = make_config(tq)
                    _, seconds = _timed(lambda: tq.quantize_(work, config, filter_fn=filter_fn))
                    _smoke(work, example)
            except Exception as e:  # noqa: BLE001 - any failure is what the row reports
                errors.append((what, _error(e)))
                continue
            note = "quantize_(model, config, filter_fn=conv or linear)" if filter_fn else \
                f"with convs: {errors[0][1]}; so torchao's default filter (nn.Linear only)"
            return Built(work, seconds, note, repr(config))
        raise Unavailable("; ".join(f"{what}: {err}" for what, err in errors))
    return build


def _torchao_quantized(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), torch.Tensor)
            and type(m.weight).__module__.startswith("torchao")]


# ----------------------------------------------------------------------------- fxquant


def _build_fxquant_fixed(bits: int) -> Callable:
    def build(model, calib, example, stats=None) -> Built:
        # Given data, the library default (QuantConfig(rounding="auto", ...)) uses it; record what it resolved to.
        data = calib if stats is None else stats
        q, seconds = _timed(lambda: fxquant.quantize(model, bits, calib_loader=data))
        _smoke(q, example)
        return Built(q, seconds, config=repr(fxquant.QuantConfig(bits=bits).data_aware(True)))
    return build


def _build_fxquant_compress(**options) -> Callable:
    """``fxquant.compress`` as a user calls it: the default search (``options`` empty) or budget mode."""
    def build(model, calib, example, stats=None) -> Built:
        # GPTQ statistics from images the search does not score (see fxquant.compress's stats_loader).
        q, seconds = _timed(lambda: fxquant.compress(model, calib, stats_loader=stats, verbose=False, **options))
        _smoke(q, example)
        report = fxquant.report(q)
        search = q.meta.get("fxquant")  # the SearchResult: its config is what the search actually used
        config = repr(getattr(search, "config", None) or fxquant.SearchConfig(**options))
        return Built(q, seconds, f"{report.average_bits:.2f} average bits (eq. 5); search on the calibration "
                                 "images, GPTQ statistics from other training images", config)
    return build


def _save_fxq(model: nn.Module, path: Path) -> Path:
    path = path.with_suffix(".fxq")
    fxquant.save(model, path)
    return path


def _fxquant_quantized(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if is_quantized_module(m)]


_PACKED = "packed only (default): unpacked + dequantized every forward"
_CACHED = "packed + cached float32 copy (set_weight_cache)"

TOOLS: list[Tool] = [
    Tool("float32", "float32", "float32 weights", _build_float, _save_state_dict, lambda m: []),
    Tool("ao-dynamic-int8", "torch.ao dynamic int8 (quantize_dynamic)", "int8 weights, int8 GEMM",
         _build_ao_dynamic, _save_state_dict, _ao_quantized),
    Tool("ao-fx-static-int8", "torch.ao FX graph mode static int8 (x86)", "int8 weights and activations",
         _build_ao_fx_static, _save_state_dict, _ao_quantized),
    Tool("torchao-int8-wo", "torchao Int8WeightOnlyConfig", "int8 weights (tensor subclass)",
         _torchao_builder(lambda tq: tq.Int8WeightOnlyConfig()), _save_state_dict, _torchao_quantized),
    Tool("torchao-int4-wo", "torchao Int4WeightOnlyConfig", "int4 weights (tensor subclass)",
         _torchao_builder(lambda tq: tq.Int4WeightOnlyConfig()), _save_state_dict, _torchao_quantized),
    Tool("torchao-intx8-wo", "torchao IntxWeightOnlyConfig(int8)", "int8 weights (tensor subclass)",
         _torchao_builder(lambda tq: tq.IntxWeightOnlyConfig(weight_dtype=torch.int8)), _save_state_dict,
         _torchao_quantized),
    Tool("torchao-intx4-wo", "torchao IntxWeightOnlyConfig(int4)", "int4 values, one per int8 byte (tensor subclass)",
         _torchao_builder(lambda tq: tq.IntxWeightOnlyConfig(weight_dtype=torch.int4)), _save_state_dict,
         _torchao_quantized),
    Tool("fxquant-8", "fxquant fixed 8 bits", _PACKED, _build_fxquant_fixed(8), _save_fxq, _fxquant_quantized),
    Tool("fxquant-8-cached", "fxquant fixed 8 bits, cached", _CACHED, _build_fxquant_fixed(8), _save_fxq,
         _fxquant_quantized, cached_of="fxquant-8"),
    Tool("fxquant-4", "fxquant fixed 4 bits", _PACKED, _build_fxquant_fixed(4), _save_fxq, _fxquant_quantized),
    Tool("fxquant-4-cached", "fxquant fixed 4 bits, cached", _CACHED, _build_fxquant_fixed(4), _save_fxq,
         _fxquant_quantized, cached_of="fxquant-4"),
    Tool("fxquant-default", "fxquant default search", _PACKED, _build_fxquant_compress(), _save_fxq,
         _fxquant_quantized),
    Tool("fxquant-default-cached", "fxquant default search, cached", _CACHED, _build_fxquant_compress(), _save_fxq,
         _fxquant_quantized, cached_of="fxquant-default"),
    Tool("fxquant-2bit", "fxquant target_bits=2", _PACKED, _build_fxquant_compress(target_bits=2.0), _save_fxq,
         _fxquant_quantized),
]
