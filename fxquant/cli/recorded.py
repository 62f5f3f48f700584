"""What ``fxquant eval`` may do with the ``metadata`` of a ``.fxq`` file: an allow-list and bounds.

A ``.fxq`` file may come from anyone, and its checksums only detect accidents.
``fxquant eval FILE`` without ``--model`` rebuilds the architecture the file
records, so the file must not choose which code runs nor how much memory is
allocated:

* :data:`RECORDED_BUILDERS` (exact specs: fxquant's own models) and
  :data:`RECORDED_FAMILIES` (a prefix and the names a library lists: every
  torchvision classifier of ``torchvision.models.list_models``) are the
  allow-list of architectures a file may name, each with the keyword arguments
  a file may pass and their ranges. Another library (e.g. ``timm:NAME``) is one
  more row. Anything else, ``module:function`` included, is refused unless the
  user passes ``--model`` explicitly.
* :func:`check_recorded` bounds every number read from the metadata (classes,
  model arguments, image size, synthetic-data parameters, normalisation,
  split) before anything is allocated, and :func:`check_model_size` builds the
  recorded architecture on the ``meta`` device (no memory) and refuses one with
  more elements than the file could hold.

Every refusal is a one-line :class:`fxquant.cli.output.CliError` naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from typing import Callable

from fxquant.cli.output import CliError

__all__ = ["Arg", "Builder", "RECORDED_BUILDERS", "RECORDED_FAMILIES", "recorded_builder", "check_recorded", "check_model_size",
           "MAX_CLASSES", "MAX_IMAGE_SIDE", "MAX_SYNTHETIC_ELEMENTS"]

MAX_CLASSES = 100_000
MAX_IMAGE_SIDE = 1024
MAX_CHANNELS = 64
MAX_SYNTHETIC_ELEMENTS = 2**27  # 10 * per_class * 13 * size**2: 256 MiB as float16
_SLACK = 1.05  # the file's element count vs the architecture's, beyond which the file cannot fit


@dataclasses.dataclass(frozen=True)
class Arg:
    """A keyword argument a file may pass to a builder: its type and inclusive range."""

    kind: type
    low: float = 0
    high: float = 0

    def accepts(self, value) -> bool:
        if self.kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        return math.isfinite(value) and self.low <= value <= self.high


@dataclasses.dataclass(frozen=True)
class Builder:
    """One architecture a file may name: ``target`` (``module:attribute``, fxquant's or a library's).

    ``factory`` (optional) builds it instead of importing ``target``, e.g. a
    library's ``get_model(name, ...)``; it is called with ``num_classes`` and the
    checked keyword arguments.
    """

    target: str
    args: dict[str, Arg] = dataclasses.field(default_factory=dict)
    factory: Callable | None = None

    def build(self, num_classes: int, kwargs: dict):
        """A fresh model (in the current default device: ``meta`` for :func:`check_model_size`)."""
        if self.factory is not None:
            return self.factory(num_classes=num_classes, **kwargs)
        module, _, attr = self.target.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj(num_classes=num_classes, **kwargs)


_TORCHVISION_ARGS = {"dropout": Arg(float, 0.0, 1.0), "aux_logits": Arg(bool), "init_weights": Arg(bool),
                     "transform_input": Arg(bool)}


def _torchvision_names() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def _torchvision_builder(name: str) -> Builder:
    import torchvision

    return Builder(f"torchvision.models:{name}", _TORCHVISION_ARGS,
                   functools.partial(torchvision.models.get_model, name, weights=None))


def _timm_names() -> frozenset[str]:
    try:
        import timm
    except ImportError:
        return frozenset()
    return frozenset(timm.list_models())


def _timm_builder(name: str) -> Builder:
    from fxquant.cli.models import build_timm_model

    return Builder(f"timm:{name}", {"in_chans": Arg(int, 1, MAX_CHANNELS)},
                   functools.partial(build_timm_model, name))


# The allow-list, in two tables. Exact specs: the recorded string -> where the class lives now
# (a spec stays valid when the code moves).
RECORDED_BUILDERS: dict[str, Builder] = {
    "fxquant.demo:DemoCNN": Builder("fxquant.demo:DemoCNN",
                                    {"in_channels": Arg(int, 1, MAX_CHANNELS), "width": Arg(int, 1, 256)}),
}
# Library families: spec prefix -> (the names it may be followed by, the builder of a name).
# A spec matches when it is the prefix followed by exactly one listed name ("resnet18", "timm:NAME").
RECORDED_FAMILIES: dict[str, tuple[Callable[[], frozenset[str]], Callable[[str], Builder]]] = {
    "": (_torchvision_names, _torchvision_builder),
    "timm:": (_timm_names, _timm_builder),
}


def recorded_builder(spec, file) -> Builder:
    """The allow-listed builder of the spec a file records, or a CliError telling to pass ``--model``."""
    if not isinstance(spec, str) or len(spec) > 200:
        raise CliError(f"{file} records an unusable model spec; pass --model NAME|MODULE:FUNCTION")
    if spec in RECORDED_BUILDERS:
        return RECORDED_BUILDERS[spec]
    for prefix, (names, make) in RECORDED_FAMILIES.items():
        name = spec[len(prefix):]
        if spec.startswith(prefix) and (prefix or ":" not in spec) and name in names():
            return make(name)
    if ":" in spec:
        raise CliError(f"{file} was compressed from the custom architecture {spec!r}; fxquant does not import "
                       f"code named inside a file: pass --model {spec} yourself if you trust it")
    raise CliError(f"{file} records the model {spec!r}, which is not a torchvision classifier nor one of "
                   f"fxquant's models; pass --model NAME|MODULE:FUNCTION")


def _int_in(meta: dict, key: str, low: int, high: int, file, default=None, prefix: str = ""):
    value = meta.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CliError(f"{file} records {prefix}{key}={str(value)[:40]}: expected an integer in {low}..{high}")
    return value


def _numbers(meta: dict, key: str, file, positive: bool = False):
    value = meta.get(key)
    if value is None:
        return None
    ok = isinstance(value, list) and 1 <= len(value) <= MAX_CHANNELS and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1e6
        and (v > 0 or not positive) for v in value)
    if not ok:
        raise CliError(f"{file} records an unusable {key} ({str(value)[:60]}): expected 1..{MAX_CHANNELS} finite "
                       f"numbers{' > 0' if positive else ''}")
    return [float(v) for v in value]


def check_recorded(meta: dict, file, builder: Builder | None) -> dict:
    """The metadata fields eval uses, each checked and bounded; ``builder`` None: the user gave ``--model``.

    Returns ``num_classes``, ``model_kwargs``, ``image_size``, ``mean``, ``std``,
    ``split_seed``, ``test_fraction`` and ``synthetic`` (None when absent).
    """
    out = {"num_classes": _int_in(meta, "num_classes", 1, MAX_CLASSES, file),
           "split_seed": _int_in(meta, "split_seed", 0, 2**63 - 1, file, 0),
           "mean": _numbers(meta, "mean", file), "std": _numbers(meta, "std", file, positive=True)}
    kwargs = meta.get("model_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise CliError(f"{file} records unusable model arguments; pass --model to rebuild it")
    if builder is not None:
        for key, value in kwargs.items():
            arg = builder.args.get(key)
            if arg is None or not arg.accepts(value):
                allowed = ", ".join(f"{k} ({a.kind.__name__})" for k, a in builder.args.items()) or "none"
                raise CliError(f"{file} records the model argument {str(key)[:40]}={str(value)[:40]}, which "
                               f"{builder.target} does not accept from a file (allowed: {allowed}); pass --model "
                               "to rebuild it")
    out["model_kwargs"] = dict(kwargs)
    size = meta.get("image_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_IMAGE_SIDE for s in size)):
        raise CliError(f"{file} records image_size {str(size)[:40]}: expected [H, W] in 1..{MAX_IMAGE_SIDE} "
                       "(pass --image-size to choose another)")
    out["image_size"] = tuple(size) if size else None
    fraction = meta.get("test_fraction", 0.2)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.01 <= fraction <= 0.99:
        raise CliError(f"{file} records test_fraction {str(fraction)[:40]}: expected a number in 0.01..0.99")
    out["test_fraction"] = float(fraction)
    out["synthetic"] = _synthetic(meta.get("synthetic"), file)
    return out


def _synthetic(params, file) -> dict | None:
    if params is None:
        return None
    bad = f"{file} records no usable synthetic-data parameters"
    if not isinstance(params, dict) or not set(params) <= {"per_class", "size", "seed", "version"}:
        raise CliError(f"{bad}; pass --data PATH")
    checked = {key: _int_in(params, key, low, high, file, prefix="synthetic.") for key, (low, high) in
               {"per_class": (1, 100_000), "size": (8, 512), "seed": (0, 2**63 - 1), "version": (0, 1000)}.items()}
    checked = {k: v for k, v in checked.items() if v is not None}
    from fxquant.data.synthetic import BANDS, SYNTHETIC_CLASSES  # only once the file asks for synthetic data

    elements = len(SYNTHETIC_CLASSES) * checked.get("per_class", 600) * len(BANDS) * checked.get("size", 32) ** 2
    if elements > MAX_SYNTHETIC_ELEMENTS:
        raise CliError(f"{bad}: {elements:,} values requested, more than the {MAX_SYNTHETIC_ELEMENTS:,} eval "
                       "generates; pass --data PATH")
    return checked


def stored_elements(header: dict) -> int:
    """Upper bound on the weights a file can describe: stored elements, packed bytes counted at 1 bit."""
    total = 0
    for entry in header["tensors"]:
        packed = any(k.endswith("packed_weight") for k in entry["keys"])
        total += entry["nbytes"] * 8 if packed else math.prod(entry["shape"])
    return total


def check_model_size(build: Callable, header: dict, file, spec: str) -> None:
    """Build the architecture on the ``meta`` device and refuse it when it is larger than the file.

    A file of a few KB naming ``num_classes=10**6`` would otherwise make eval
    allocate gigabytes before the architecture check fails.
    """
    import torch

    try:
        with torch.device("meta"):
            model = build()
        have = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    except Exception:  # noqa: BLE001 - some builders cannot run on meta; they are bounded by check_recorded
        return
    limit = stored_elements(header) * _SLACK + 1024
    if have > limit:
        raise CliError(f"{file} cannot hold {spec} as recorded: the architecture has {have:,} parameter and "
                       f"buffer elements, the file at most {int(limit):,} (crafted or wrong num_classes/model "
                       "arguments); refusing to allocate it")
