"""The model side of the ``fxquant`` command line: architectures by name, float checkpoints.

:func:`build_model` builds a torchvision classifier by name, a timm architecture as
``timm:NAME`` (:func:`build_timm_model`, never pretrained), or any
``module:function`` (importable from the current directory);
:func:`check_model_spec` rejects a bad name early, with suggestions.
:func:`load_checkpoint` reads float weights with ``torch.load(weights_only=True)``
and :func:`load_weights` loads them, explaining in one line why they do not fit.
Every problem is a :class:`fxquant.cli.output.CliError`.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect as pyinspect
import os
import sys
from pathlib import Path

from fxquant.cli.output import CliError, one_line

__all__ = ["check_model_spec", "build_model", "check_file", "load_checkpoint", "load_weights", "TIMM_PREFIX",
           "is_timm_spec", "check_timm_name", "build_timm_model", "in_chans_kwargs"]


@contextlib.contextmanager
def _cwd_importable():
    """Let ``module:function`` name a module in the current directory (as ``python -m`` does)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_model_spec(spec: str) -> None:
    """Fail early (one line) on an unknown torchvision name or a malformed ``module:function``."""
    if is_timm_spec(spec):
        check_timm_name(spec[len(TIMM_PREFIX):])
        return
    if ":" in spec:
        module, _, func = spec.partition(":")
        if not module or not func:
            raise CliError(f"--model {spec!r}: expected a torchvision name or module:function")
        return
    names = _torchvision_names()
    if spec not in names:
        close = difflib.get_close_matches(spec, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else \
            " (e.g. resnet18, mobilenet_v3_small, efficientnet_b0)"
        raise CliError(f"unknown model {spec!r}: not a torchvision classifier name nor module:function{hint}")


def build_model(spec: str, num_classes: int, model_kwargs: dict | None = None):
    """A freshly initialised ``spec`` (torchvision name or ``module:function``) in eval mode."""
    from torch import nn

    check_model_spec(spec)
    kwargs = dict(model_kwargs or {})
    if is_timm_spec(spec):
        unknown = sorted(set(kwargs) - {"in_chans"})
        if unknown:
            raise CliError(f"--model {spec}: unexpected model arguments {unknown} (only in_chans)")
        return build_timm_model(spec[len(TIMM_PREFIX):], num_classes, kwargs.get("in_chans", 3))
    if ":" not in spec:
        import torchvision

        try:
            model = torchvision.models.get_model(spec, weights=None, num_classes=num_classes, **kwargs)
        except Exception as e:  # noqa: BLE001 - reported as one line
            raise CliError(f"cannot build {spec}(num_classes={num_classes}): {type(e).__name__}: {e}") from e
    else:
        module_name, _, func_name = spec.partition(":")
        with _cwd_importable():
            try:
                obj = importlib.import_module(module_name)
            except ImportError as e:
                raise CliError(f"--model {spec}: cannot import module {module_name!r} ({e}); run from the "
                               "folder that holds it, or install it") from e
            except Exception as e:  # noqa: BLE001
                raise CliError(f"--model {spec}: importing {module_name!r} failed: {type(e).__name__}: {e}") \
                    from e
            for part in func_name.split("."):
                if not hasattr(obj, part):
                    raise CliError(f"--model {spec}: module {module_name!r} has no attribute {func_name!r}")
                obj = getattr(obj, part)
            if not callable(obj):
                raise CliError(f"--model {spec}: {func_name!r} is not callable")
            try:
                params = pyinspect.signature(obj).parameters.values()
                takes_classes = any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in params)
            except (TypeError, ValueError):
                takes_classes = False
            if takes_classes:
                kwargs["num_classes"] = num_classes
            try:
                model = obj(**kwargs)
            except Exception as e:  # noqa: BLE001
                args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
                raise CliError(f"--model {spec}: {func_name}({args}) failed: {type(e).__name__}: {e}") from e
        if not isinstance(model, nn.Module):
            raise CliError(f"--model {spec}: {func_name}() returned a {type(model).__name__}, not an nn.Module")
    return model.eval()


# ----------------------------------------------------------------------------- timm

TIMM_PREFIX = "timm:"
_MAX_IN_CHANS = 1024


def is_timm_spec(spec) -> bool:
    """Whether ``spec`` is ``timm:NAME`` (a timm architecture built with ``pretrained=False``)."""
    return isinstance(spec, str) and spec.startswith(TIMM_PREFIX)


def _timm():
    try:
        import timm
    except ImportError as e:
        raise CliError("--model timm:NAME needs the timm package (pip install timm)") from e
    return timm


def check_timm_name(name: str) -> None:
    """Fail (one line, with suggestions) unless ``name`` is a timm architecture."""
    timm = _timm()
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
        raise CliError(f"unknown timm model {name!r}{hint}")


def build_timm_model(name: str, num_classes: int, in_chans: int = 3):
    """A freshly initialised timm ``name`` with ``in_chans`` input channels, in eval mode.

    Always ``pretrained=False``: nothing is downloaded, the weights come from the
    checkpoint (``compress``) or the .fxq file (``eval``).
    """
    check_timm_name(name)
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or not 1 <= in_chans <= _MAX_IN_CHANS:
        raise CliError(f"--in-chans must be an integer in 1..{_MAX_IN_CHANS}, got {in_chans!r}")
    try:
        model = _timm().create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    except Exception as e:  # noqa: BLE001 - reported as one line
        raise CliError(f"cannot build timm:{name}(num_classes={num_classes}, in_chans={in_chans}): "
                       f"{type(e).__name__}: {one_line(str(e), 300)}") from e
    return model.eval()


def in_chans_kwargs(args, spec: str) -> dict:
    """``{"in_chans": N}`` from ``--in-chans`` (timm models only), else nothing."""
    if getattr(args, "in_chans", None) is None:
        return {}
    if not is_timm_spec(spec):
        raise CliError(f"--in-chans applies to --model timm:NAME only, not {spec!r}")
    return {"in_chans": args.in_chans}


def _is_fxq(path: Path) -> bool:
    from fxquant.fileformat.container import MAGIC

    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def check_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is an existing file, else a one-line error ``no <what> at <path>``."""
    p = Path(path)
    if not p.exists():
        raise CliError(f"no {what} at {path}")
    if not p.is_file():
        raise CliError(f"{what} {path} is not a file")
    return p


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(state_dict, meta)`` of a float checkpoint, read with ``torch.load(weights_only=True)``."""
    import pickle

    import torch

    p = check_file(path, "checkpoint")
    if _is_fxq(p):
        raise CliError(f"{path} is a compressed .fxq file, not float weights (give the float checkpoint)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CliError(f"cannot read checkpoint {path} with torch.load(weights_only=True): it holds objects "
                       "other than tensors (a whole pickled model?); save model.state_dict() instead") from None
    except Exception as e:  # noqa: BLE001
        raise CliError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state, meta = obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, meta = obj, {}
    else:
        raise CliError(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict or a dict with a "
                       "'state_dict' key")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CliError(f"checkpoint {path}: its state_dict should map names to tensors")
    return state, meta


def load_weights(model, state: dict, path, spec: str, num_classes: int) -> None:
    """``model.load_state_dict(state)`` with a one-line explanation when they do not fit."""
    own = model.state_dict()
    if all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in own):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DataParallel
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if extra:
        problems.append(f"{len(extra)} unexpected ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})")
    if shapes:
        k = shapes[0]
        problems.append(f"{k} is {tuple(state[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
                        + (f" ({len(shapes)} such tensors)" if len(shapes) > 1 else ""))
    if problems:
        hint = " (wrong --num-classes?)" if shapes and not missing and not extra else \
            " (wrong --model?)" if missing or extra else ""
        raise CliError(f"checkpoint {path} does not fit {spec} with {num_classes} classes: "
                       f"{'; '.join(problems)}{hint}")
    try:
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001
        raise CliError(f"checkpoint {path} does not fit {spec}: {one_line(str(e), 300)}") from e
