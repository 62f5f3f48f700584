"""Copy a model and turn its reparametrized weights into plain parameters, never touching the caller's.

PyTorch computes some weights on the fly from other tensors:

* ``torch.nn.utils.parametrize`` (``parametrizations.weight_norm``,
  ``spectral_norm``, any ``register_parametrization``): the module's class is
  swapped for a dynamic ``Parametrized<Class>`` whose ``weight`` is a property.
* the legacy hook-based ``nn.utils.weight_norm`` / ``nn.utils.spectral_norm``:
  a forward pre-hook recomputes a plain ``weight`` attribute from ``weight_g`` /
  ``weight_v`` (or ``weight_orig``) before every call.

fxquant quantizes the effective weight, so the working copy gets a plain
Parameter holding it. Two traps make this harder than ``deepcopy`` +
``remove_parametrizations``:

* ``deepcopy`` shares class objects, and ``remove_parametrizations`` deletes the
  ``weight`` property from the (shared) dynamic class: the caller's model loses
  its weight. :func:`bake_reparametrizations` therefore only reassigns the
  *copy's* ``__class__`` and never edits a class.
* the legacy weight norm stores ``weight`` as a non-leaf tensor, which
  ``deepcopy`` refuses; :func:`copy_model` hands ``deepcopy`` a detached copy
  of such tensors (the pre-hook recomputes them anyway).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["copy_model", "bake_reparametrizations"]

log = logging.getLogger("fxquant.trace")

_LEGACY_HOOKS = {"WeightNorm": nn.utils.remove_weight_norm, "SpectralNorm": nn.utils.remove_spectral_norm}


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that shares no tensor or module with it (classes are shared, as always).

    Unlike ``copy.deepcopy`` it accepts non-leaf tensors stored as plain
    attributes (the legacy ``weight_norm`` keeps its computed ``weight`` so):
    the copy gets a detached clone of them.
    """
    memo: dict[int, object] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    try:
        return copy.deepcopy(model, memo)
    except Exception as e:  # noqa: BLE001 - reported with what to do
        raise TypeError(f"fxquant cannot copy the {type(model).__name__} model ({type(e).__name__}: {e}); "
                        "fxquant works on a copy so that your model is never modified: make it "
                        "deep-copyable") from e


def _plain_base(cls: type) -> type:
    """The class a ``Parametrized<Class>`` was made from."""
    return cls.__bases__[0]


def _original(plist: nn.Module) -> torch.Tensor:
    """The (first) tensor a ``ParametrizationList`` computes from."""
    return plist.original if plist.is_tensor else plist.original0


def _bake_parametrize(name: str, module: nn.Module) -> None:
    base = _plain_base(type(module))
    with torch.no_grad():
        values = {attr: getattr(module, attr) for attr in module.parametrizations.keys()}
    is_param = {attr: isinstance(_original(module.parametrizations[attr]), nn.Parameter) for attr in values}
    # Only this instance changes class: the dynamic class, shared with the caller's model by deepcopy,
    # keeps its properties (torch's remove_parametrizations deletes them from the class).
    del module._modules["parametrizations"]
    module.__class__ = base
    for attr, value in values.items():
        value = value.detach().clone()
        if is_param[attr]:
            module.register_parameter(attr, nn.Parameter(value, requires_grad=False))
        else:
            module.register_buffer(attr, value)
        log.info("fxquant: folded the parametrization of %s.%s into a plain parameter", name or "<root>", attr)


def bake_reparametrizations(root: nn.Module) -> list[str]:
    """Replace every reparametrized weight of ``root`` (in place) by a plain tensor of its current value.

    ``root`` must be a copy (see :func:`copy_model`): its modules are edited,
    but no class object is. Returns the ``module.attr`` paths baked.
    """
    baked = []
    for name, module in list(root.named_modules()):
        if parametrize.is_parametrized(module):
            attrs = list(module.parametrizations.keys())
            _bake_parametrize(name, module)
            baked += [f"{name}.{a}" if name else a for a in attrs]
        for hook_id, hook in list(module._forward_pre_hooks.items()):
            remove = _LEGACY_HOOKS.get(type(hook).__name__)
            if remove is None or not hasattr(hook, "name"):
                continue
            try:
                remove(module, hook.name)
            except Exception as e:  # noqa: BLE001 - name the module at fault
                raise ValueError(f"fxquant: cannot fold {type(hook).__name__} of {name or '<root>'}."
                                 f"{hook.name}: {type(e).__name__}: {e}") from e
            module._forward_pre_hooks.pop(hook_id, None)
            baked.append(f"{name}.{hook.name}" if name else hook.name)
            log.info("fxquant: folded %s of %s.%s into a plain parameter", type(hook).__name__,
                     name or "<root>", hook.name)
    return baked
