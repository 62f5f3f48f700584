"""Trace pass: capture any ``nn.Module`` as a ``torch.fx.GraphModule``.

Symbolic tracing fails on data-dependent control flow and some Python
constructs. When it fails inside a submodule, :func:`trace` retries with that
submodule kept whole as a leaf (its convs and linears are still found and
quantized: see :mod:`fxquant.passes.layers`) and logs which submodule it fell back on.
When the failure is in the model's own ``forward`` no fallback is possible, and
:class:`TraceFailure` says where it failed and what to do.
"""

from __future__ import annotations

import logging
import sys
from typing import Iterable

from torch import fx, nn

from fxquant.nn.modules import is_quantized_module, quant_module_for
from fxquant.passes.fold import fold_weights
from fxquant.passes.reparam import bake_reparametrizations, copy_model as _copy_model

__all__ = ["FxquantTracer", "TraceFailure", "trace"]

log = logging.getLogger("fxquant.trace")

_MAX_FALLBACKS = 32


class TraceFailure(RuntimeError):
    """Tracing failed; ``module_path`` names the submodule whose forward failed ("" = the model)."""

    def __init__(self, message: str, module_path: str):
        super().__init__(message)
        self.module_path = module_path


class FxquantTracer(fx.Tracer):
    """An ``fx.Tracer`` that keeps quantized modules and user-chosen submodules as leaves.

    It also remembers the innermost submodule whose ``forward`` raised, so that
    :func:`trace` can name it or fall back to treating it as a leaf.
    """

    def __init__(self, leaf_modules: Iterable[str] = (), leaf_types: tuple[type, ...] = ()):
        super().__init__(autowrap_functions=_library_notrace_functions())
        self.leaf_names = set(leaf_modules)
        self.leaf_types = tuple(leaf_types)
        self.failed_module: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if is_quantized_module(m) or module_qualified_name in self.leaf_names:
            return True
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        path = self.path_of_module(m)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_module is None:  # the innermost frame sees it first
                self.failed_module = path
            raise


def _library_notrace_functions() -> tuple:
    """Functions a loaded library marks as not symbolically traceable (timm's ``register_notrace_function``).

    timm wraps e.g. its position-embedding resampling this way for its own FX
    feature extraction; without it the top-level ``forward`` of its ViTs cannot
    be traced (no leaf fallback can help there).
    """
    timm_fx = sys.modules.get("timm.layers._fx")
    getter = getattr(timm_fx, "get_notrace_functions", None)
    if getter is None:
        return ()
    try:
        return tuple(f for f in getter() if callable(f))
    except Exception:  # noqa: BLE001 - an optional nicety: tracing proceeds without it
        return ()


def _trace_once(model: nn.Module, leaves: set[str], leaf_types, concrete_args):
    tracer = FxquantTracer(leaves, leaf_types)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as e:  # noqa: BLE001 - any tracing error is reported with its location
        return None, tracer.failed_module or "", e
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    _restore_weight_owners(gm, tracer.root)
    fold_weights(gm)
    return gm, None, None


def _restore_weight_owners(gm: fx.GraphModule, root: nn.Module) -> None:
    """Put back the Conv/Linear modules whose weights the graph reads with ``get_attr``.

    ``fx.GraphModule`` copies a ``get_attr`` target under placeholder
    ``nn.Module()`` parents, so a Linear whose weight is fed to a function
    (torchvision's Swin does this) would lose its type; the layer finder and
    the rewrite need it. The placeholders also get the original's train/eval mode.
    """
    for path, module in gm.named_modules():
        if path and type(module) is nn.Module:  # an FX placeholder parent: give it the original's mode
            module.train(root.get_submodule(path).training)
    for node in gm.graph.nodes:
        owner_path = node.target.rpartition(".")[0] if node.op == "get_attr" else ""
        if not owner_path:
            continue
        original = root.get_submodule(owner_path)
        current = gm.get_submodule(owner_path)
        if current is not original and type(current) is nn.Module and quant_module_for(original):
            parent_path, _, child = owner_path.rpartition(".")
            setattr(gm.get_submodule(parent_path), child, original)


def trace(
    model: nn.Module,
    *,
    leaf_modules: Iterable[str] = (),
    leaf_types: tuple[type, ...] = (),
    concrete_args: dict | None = None,
    fallback: bool = True,
    copy_model: bool = True,
) -> fx.GraphModule:
    """Trace ``model`` into a new GraphModule (the caller's model is not modified).

    Args:
        model: any ``nn.Module`` (already a GraphModule is fine too).
        leaf_modules: qualified names of submodules to keep whole (not traced through).
        leaf_types: module classes to keep whole.
        concrete_args: passed to ``fx.Tracer.trace`` (e.g. to fix a flag argument).
        fallback: when a submodule cannot be traced, retry with it as a leaf
            (logged as a warning). With ``False`` the failure raises at once.
        copy_model: deep-copy ``model`` first (default) so later in-place
            passes never touch the caller's modules. Reparametrized weights
            (``parametrize``, ``weight_norm``, ``spectral_norm``, new and legacy)
            are baked into plain parameters of the traced model (of ``model``
            itself when ``copy_model=False``; no class object is ever edited:
            :mod:`fxquant.passes.reparam`), and weights computed from parameters
            only in ``forward`` (weight standardisation, ``g * v / v.norm()``) are
            folded into one parameter each (:mod:`fxquant.passes.fold`).

    Raises:
        TraceFailure: tracing failed in the model's own ``forward``, or in a
            submodule with ``fallback=False``; the message names the submodule.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"trace expects an nn.Module, got {type(model).__name__}")
    root = _copy_model(model) if copy_model else model
    bake_reparametrizations(root)
    known = {name for name, _ in root.named_modules()}
    leaves = set(leaf_modules)
    unknown = sorted(leaves - known)
    if unknown:
        raise ValueError(f"leaf_modules names no submodule of the model: {unknown}")
    for _ in range(_MAX_FALLBACKS):
        gm, failed, error = _trace_once(root, leaves, tuple(leaf_types), concrete_args)
        if gm is not None:
            return gm
        where = f"submodule '{failed}' ({type(root.get_submodule(failed)).__name__})" if failed else \
            f"the model's own forward ({type(root).__name__}.forward)"
        if not failed:
            raise TraceFailure(
                f"torch.fx could not trace {where}: {type(error).__name__}: {error}. "
                "fxquant can only fall back on submodules; make the top-level forward free of "
                "data-dependent control flow, or pass concrete_args for flag arguments.",
                failed,
            ) from error
        if not fallback or failed in leaves:
            raise TraceFailure(
                f"torch.fx could not trace {where}: {type(error).__name__}: {error}. "
                f"Keep it whole with trace(..., leaf_modules=['{failed}']) "
                "(fxquant still quantizes the convs/linears inside it).",
                failed,
            ) from error
        log.warning("fxquant: cannot trace %s (%s: %s); keeping it as a leaf module",
                    where, type(error).__name__, error)
        leaves.add(failed)
    raise TraceFailure(f"tracing still failed after {_MAX_FALLBACKS} leaf fallbacks", "")

