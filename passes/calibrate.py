"""Data-aware quantization pass: GPTQ rounding and bias correction from calibration inputs.

Two ways to use the calibration data (labels are never needed):

* :func:`sequential_quantize` (fixed widths, ``fxquant.quantize``): layers are
  quantized in execution order; each one's GPTQ statistics come from its inputs
  in the model whose earlier layers are already quantized, and its bias is
  corrected so that its per-channel output mean equals the float model's (so the
  correction also absorbs the error arriving from upstream, and a following
  BatchNorm sees the mean its running statistics expect).
* :class:`LayerQuantizer` (the search): a candidate width is tried for one layer
  at a time in any order, so statistics are measured once on the float model and
  every ``(layer, bits)`` result is cached. Bias correction is then the analytic
  ``b' = b - (Q - W) E[x]`` for the layer's own weight error.

Data-aware handling needs a Conv1d/2d/3d or Linear module called once in the
graph, its weight untied; any other layer is rounded to nearest (logged).
"""

from __future__ import annotations

import copy
import logging
import time

import torch
from torch import fx, nn

from fxquant.core.calibration import InputStats, supports_input_stats
from fxquant.core.config import QuantConfig
from fxquant.core.gptq import GPTQFactor, gptq_factor, gptq_quantize
from fxquant.core.quantizer import QuantizedWeight, quantize_weight
from fxquant.passes.layers import find_layers, weight_of
from fxquant.schema import Layer

__all__ = ["data_aware_layers", "sequential_quantize", "LayerQuantizer"]

log = logging.getLogger("fxquant.calibrate")


def data_aware_layers(gm: fx.GraphModule, layers: list[Layer]) -> list[Layer]:
    """The layers whose inputs can be observed at one module call (see the module docstring)."""
    calls: dict[str, int] = {}
    read: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
        elif node.op == "get_attr":
            read.add(node.target)
    out = [lay for lay in layers
           if lay.how == "module" and not lay.tied and calls.get(lay.module_path) == 1
           and lay.param_path not in read and supports_input_stats(gm.get_submodule(lay.module_path))]
    skipped = [lay.name for lay in layers if lay not in out]
    if skipped:
        log.info("fxquant: nearest rounding for %d layer(s) without a single module call: %s",
                 len(skipped), ", ".join(skipped[:8]) + (" ..." if len(skipped) > 8 else ""))
    return out


def _quantize_layer(module: nn.Module, stats: InputStats | None, cfg: QuantConfig, name: str) -> QuantizedWeight:
    if cfg.rounding == "gptq" and stats is not None and stats.count:
        return gptq_quantize(module.weight, stats.hessian, cfg, name, groups=getattr(module, "groups", 1))
    return quantize_weight(module.weight, cfg, name)


def _channel_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, nn.Linear) else 1


def _channel_sum(y: torch.Tensor, dim: int) -> tuple[torch.Tensor, int]:
    y = y.movedim(dim, -1)
    flat = y.reshape(-1, y.shape[-1]).to(torch.float32)
    return flat.sum(dim=0), flat.shape[0]


def _set_bias(module: nn.Module, bias: torch.Tensor) -> None:
    if module.bias is None:
        module.bias = nn.Parameter(bias.clone(), requires_grad=False)
    else:
        module.bias.data.copy_(bias)


@torch.no_grad()
def sequential_quantize(gm: fx.GraphModule, widths: dict[str, int], config: QuantConfig,
                        inputs: list[torch.Tensor], *, layers: list[Layer] | None = None
                        ) -> dict[str, tuple[QuantizedWeight, torch.Tensor | None]]:
    """Quantize ``widths``' layers with ``inputs``; edits ``gm``'s weights (and biases) in place.

    ``config`` must be resolved (``QuantConfig.data_aware(True)``). Afterwards each
    layer's weight holds its dequantized value and its bias the corrected one;
    returns ``{layer: (QuantizedWeight, corrected bias or None)}`` for
    :func:`fxquant.passes.rewrite.rewrite`.
    """
    layers = find_layers(gm) if layers is None else layers
    todo = [lay for lay in layers if lay.name in widths]
    aware = {lay.node: lay for lay in data_aware_layers(gm, todo)}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"data-aware quantization runs the model on calibration inputs and needs a "
                         f"single-input model; this one takes {len(placeholders)} inputs")
    ref = copy.deepcopy(gm) if config.bias_correction else None  # the float model, for output means
    out: dict[str, tuple[QuantizedWeight, torch.Tensor | None]] = {}
    aware_names = {lay.name for lay in aware.values()}
    for lay in todo:  # these need no data; layers after them must see them quantized
        if lay.name not in aware_names:
            qw = quantize_weight(weight_of(gm, lay), config.with_bits(widths[lay.name]), lay.name)
            weight_of(gm, lay).copy_(qw.dequantize())
            out[lay.name] = (qw, None)

    nodes = list(gm.graph.nodes)
    last_use: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        for inp in node.all_input_nodes:
            last_use[inp] = node
    dead_after: dict[fx.Node, list[fx.Node]] = {}
    for value, user in last_use.items():
        dead_after.setdefault(user, []).append(value)
    # (interpreter, per-batch envs, this graph's node for a node of gm): the float run, if any,
    # executes the reference copy, whose Node objects differ.
    runners = [(fx.Interpreter(gm, garbage_collect_values=False),
                [{placeholders[0]: x.clone()} for x in inputs], {n: n for n in nodes})]
    if ref is not None:
        ref_nodes = dict(zip(nodes, ref.graph.nodes))
        runners.append((fx.Interpreter(ref, garbage_collect_values=False),
                        [{ref_nodes[placeholders[0]]: x.clone()} for x in inputs], ref_nodes))
    done = 0
    for node in nodes[1:]:
        if node.op == "output":
            break
        layer = aware.get(node.name)
        if layer is not None:
            interp, envs, _ = runners[0]
            module = gm.get_submodule(layer.module_path)
            stats = InputStats(module) if config.rounding == "gptq" else None
            if stats is not None:
                for env in envs:
                    interp.env = env
                    stats.add(interp.fetch_args_kwargs_from_env(node)[0][0])
            qw = _quantize_layer(module, stats, config.with_bits(widths[layer.name]), layer.name)
            module.weight.copy_(qw.dequantize())
        for interp, envs, key in runners:
            for env in envs:
                interp.env = env
                env[key[node]] = interp.run_node(key[node])
        if layer is not None:
            bias = None
            if ref is not None:
                bias = _correct_bias(module, node, runners[0][1],
                                     [{node: env[ref_nodes[node]]} for env in runners[1][1]])
            out[layer.name] = (qw, bias)
            done += 1
            log.info("fxquant: data-aware %s (%d/%d)", layer.name, done, len(aware))
        for _, envs, key in runners:
            for env in envs:
                for value in dead_after.get(node, ()):
                    env.pop(key[value], None)
    return out


def _correct_bias(module: nn.Module, node: fx.Node, q_envs: list[dict], f_envs: list[dict]) -> torch.Tensor:
    """Shift ``module``'s bias so its calibration output mean equals the float model's; returns it."""
    dim = _channel_dim(module)
    q_sum = f_sum = 0
    count = 0
    for q_env, f_env in zip(q_envs, f_envs):
        qs, n = _channel_sum(q_env[node], dim)
        fs, _ = _channel_sum(f_env[node], dim)
        q_sum, f_sum, count = q_sum + qs, f_sum + fs, count + n
    delta = (f_sum - q_sum) / max(count, 1)
    base = module.bias.detach().to(torch.float32) if module.bias is not None else torch.zeros_like(delta)
    _set_bias(module, (base + delta).to(module.weight.dtype))
    shape = [1] * q_envs[0][node].dim()
    shape[dim] = -1
    for env in q_envs:  # the rest of this run must see the corrected output
        env[node] = env[node] + delta.view(shape).to(env[node].dtype)
    return module.bias.detach().clone()


class LayerQuantizer:
    """``(layer, bits) -> (QuantizedWeight, bias)`` for the search, cached.

    ``config`` must be resolved (``QuantConfig.data_aware``). Statistics of the
    data-aware layers are measured once, at construction, on ``gm`` with its
    current (float) weights and ``inputs``. :meth:`apply` writes a candidate into
    ``gm`` (weight and bias, in place); :meth:`restore` puts the float weights and
    original biases back (a bias added for the correction is removed again).
    """

    def __init__(self, gm: fx.GraphModule, layers: list[Layer], config: QuantConfig,
                 inputs: list[torch.Tensor] | None = None) -> None:
        t0 = time.perf_counter()
        self.gm, self.config = gm, config
        self.layers = {lay.name: lay for lay in layers}
        self._float = {lay.name: weight_of(gm, lay).detach().clone() for lay in layers}
        self._cache: dict[tuple[str, int], tuple[QuantizedWeight, torch.Tensor, torch.Tensor | None]] = {}
        self._factors: dict[str, GPTQFactor] = {}
        aware = data_aware_layers(gm, layers) if config.needs_data else []
        if aware and not inputs:
            raise ValueError("data-aware quantization (rounding='gptq' or bias_correction) needs "
                             "calibration inputs")
        self._stats = self._measure(aware, inputs) if aware else {}
        self._bias: dict[str, torch.Tensor | None] = {}
        if config.bias_correction:
            for lay in aware:
                module = gm.get_submodule(lay.module_path)
                self._bias[lay.name] = None if module.bias is None else module.bias.detach().clone()
        self.setup_seconds = time.perf_counter() - t0  # measuring the statistics

    @torch.no_grad()
    def _measure(self, aware: list[Layer], inputs: list[torch.Tensor]) -> dict[str, InputStats]:
        stats = {lay.name: InputStats(self.gm.get_submodule(lay.module_path)) for lay in aware}
        hooks = [st.module.register_forward_pre_hook(lambda _m, args, st=st: st.add(args[0]))
                 for st in stats.values()]
        try:
            for x in inputs:
                self.gm(x.clone())
        finally:
            for h in hooks:
                h.remove()
        for name, st in stats.items():
            if st.count == 0:
                log.warning("fxquant: calibration inputs never reached %s; it is rounded to nearest", name)
        return stats

    def quantized(self, layer: Layer, bits: int) -> tuple[QuantizedWeight, torch.Tensor | None]:
        """The quantized weight of ``layer`` at ``bits`` and its corrected bias (None: unchanged)."""
        qw, _, bias = self._entry(layer, bits)
        return qw, bias

    def _entry(self, layer: Layer, bits: int):
        key = (layer.name, bits)
        if key not in self._cache:
            cfg = self.config.with_bits(bits)
            w = self._float[layer.name]
            stats = self._stats.get(layer.name)
            if stats is not None and stats.count and cfg.rounding == "gptq":
                module = self.gm.get_submodule(layer.module_path)
                if layer.name not in self._factors:  # the costly part; the same for every width
                    self._factors[layer.name] = gptq_factor(stats.hessian, cfg.damp, layer.name)
                qw = gptq_quantize(w, self._factors[layer.name], cfg, layer.name,
                                   groups=getattr(module, "groups", 1))
            else:
                qw = quantize_weight(w, cfg, layer.name)
            deq = qw.dequantize()
            bias = None
            if layer.name in self._bias and stats is not None and stats.count:
                mean = stats.mean  # [g, K]
                g = mean.shape[0]
                diff = (deq - w).reshape(g, w.shape[0] // g, -1)
                delta = torch.bmm(diff, mean.unsqueeze(2)).reshape(-1)
                base = self._bias[layer.name]
                bias = (torch.zeros_like(delta) if base is None else base.to(torch.float32)) - delta
            self._cache[key] = (qw, deq, bias)
        return self._cache[key]

    @torch.no_grad()
    def apply(self, layer: Layer, bits: int | None) -> None:
        """Write ``layer`` at ``bits`` (None: float) into ``gm``, in place."""
        if bits is None:
            weight_of(self.gm, layer).copy_(self._float[layer.name])
            if layer.name in self._bias:
                module = self.gm.get_submodule(layer.module_path)
                base = self._bias[layer.name]
                if base is None:
                    module.bias = None
                else:
                    module.bias.data.copy_(base)
            return
        _, deq, bias = self._entry(layer, bits)
        weight_of(self.gm, layer).copy_(deq)
        if bias is not None:
            _set_bias(self.gm.get_submodule(layer.module_path), bias)

    def restore(self) -> None:
        """Every layer back to its float weight and original bias."""
        for layer in self.layers.values():
            self.apply(layer, None)

    def chosen(self, bits: dict[str, int]) -> dict[str, tuple[QuantizedWeight, torch.Tensor | None]]:
        """``{layer: (QuantizedWeight, bias)}`` at the given widths, for :func:`fxquant.passes.rewrite.rewrite`."""
        return {name: self.quantized(self.layers[name], b) for name, b in bits.items() if name in self.layers}
