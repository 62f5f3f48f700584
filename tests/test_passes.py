"""FX passes over the custom-architecture zoo: layer discovery, numbers and structure of the rewrite."""

import copy
import logging
import math

import pytest
import torch
from torch import fx, nn

import fxquant
from fxquant import passes
from fxquant import QuantConfig, fake_quantize
from fxquant.nn.modules import is_quantized_module
from tests.models import ZOO, UntraceableTop, WithUntraceableBlock, build

NAMES = sorted(ZOO)


def _fake_quantized_reference(model, bits: dict, config=None):
    """The float model with each chosen layer's weight replaced by its fake-quantized value."""
    ref = copy.deepcopy(model)
    layers = passes.layers_by_name(passes.trace(ref, copy_model=False))
    for name, b in bits.items():
        param = ref.get_parameter(layers[name].param_path)
        with torch.no_grad():
            param.copy_(fake_quantize(param, (config or QuantConfig()).with_bits(b)))
    return ref


@pytest.mark.parametrize("name", NAMES)
def test_layer_names_in_execution_order(name):
    model, _, expected = build(name)
    assert fxquant.quantizable_layers(model) == expected


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bits", [8, 3, 1])
def test_rewrite_computes_exactly_with_the_quantized_weights(name, bits):
    model, x, expected = build(name)
    q = fxquant.quantize(model, bits)
    ref = _fake_quantized_reference(model, {n: bits for n in expected})
    with torch.no_grad():
        torch.testing.assert_close(q(x), ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_rewrite_structure(name):
    model, x, expected = build(name)
    before = copy.deepcopy(model.state_dict())
    types_before = [type(m) for m in model.modules()]
    q = fxquant.quantize(model, 4)
    assert isinstance(q, fx.GraphModule)
    assert not any(m.training for m in q.modules())  # replacements keep the eval mode
    q.graph.lint()
    layers = passes.find_layers(passes.trace(model))
    # Every layer packed, each exactly once; no float copy of a layer weight left.
    storage = fxquant.weight_storage(q)
    assert storage.packed_params == sum(layer.params for layer in layers)
    assert storage.packed_bytes == sum(math.ceil(layer.params * 4 / 8) for layer in layers)
    sd = q.state_dict()
    for layer in layers:
        assert layer.param_path not in sd or not sd[layer.param_path].is_floating_point()
    assert passes.find_layers(q) == []  # nothing left to quantize
    assert [i.bits for i in passes.layer_infos(q)] == [4] * len(expected)
    # The caller's model is untouched, and a state_dict round trip reproduces the outputs.
    assert [type(m) for m in model.modules()] == types_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    fresh = fxquant.quantize(model, 4)
    for buf in fresh.buffers():
        buf.zero_()
    fresh.load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(fresh(x), q(x))


def test_tied_weight_is_one_layer_stored_once():
    model, x, _ = build("tied")
    layers = passes.find_layers(passes.trace(model))
    assert [(lay.name, lay.tied) for lay in layers] == [("a", ("b.weight",)), ("c", ())]
    q = fxquant.quantize(model, 5)
    assert q.a.packed_weight is q.b.packed_weight
    assert fxquant.weight_storage(q).packed_params == 36 + 12


def test_module_called_twice_is_one_layer():
    model, x, _ = build("called_twice")
    q = fxquant.quantize(model, 6)
    calls = [n for n in q.graph.nodes if n.op == "call_module" and n.target == "shared"]
    assert len(calls) == 2 and isinstance(q.shared, fxquant.QuantConv2d)


def test_functional_params_become_packed_weight_modules():
    model, x, _ = build("functional")
    q = fxquant.quantize(model, 4)
    assert isinstance(q.kernel, fxquant.PackedWeight) and isinstance(q.proj, fxquant.PackedWeight)
    assert isinstance(q.pos, nn.Parameter)  # added to activations, not a matmul weight
    assert {n.target for n in q.graph.nodes if n.op == "call_module"} == {"kernel", "proj"}


def test_attention_projections_are_packed():
    model, x, _ = build("tiny_vit")
    q = fxquant.quantize(model, 8)
    assert isinstance(q.attn, fxquant.QuantMultiheadAttention)
    assert isinstance(q.attn.out_proj, fxquant.QuantLinear)
    assert "attn.in_proj_weight" not in q.state_dict()
    assert q.state_dict()["attn.in_proj_weight_packed.packed_weight"].dtype == torch.uint8


def test_untraceable_submodule_falls_back_to_a_leaf(caplog):
    model = WithUntraceableBlock().eval()
    with caplog.at_level(logging.WARNING):
        gm = passes.trace(model)
    assert "'block'" in caplog.text and "leaf" in caplog.text
    assert any(n.op == "call_module" and n.target == "block" for n in gm.graph.nodes)
    with pytest.raises(passes.TraceFailure, match=r"submodule 'block'.*leaf_modules=\['block'\]") as info:
        passes.trace(model, fallback=False)
    assert info.value.module_path == "block"


def test_untraceable_top_level_forward_names_the_model():
    with pytest.raises(passes.TraceFailure, match=r"UntraceableTop\.forward") as info:
        fxquant.quantize(UntraceableTop(), 4)
    assert info.value.module_path == ""


def test_bits_dict_partial_and_errors():
    model, x, names = build("conv_zoo")
    q = fxquant.quantize(model, {"stem": 2, "head": None})
    assert isinstance(q.stem, fxquant.QuantConv2d) and q.stem.bits == 2
    assert type(q.head) is nn.Linear and type(q.grouped) is nn.Conv2d
    with pytest.raises(ValueError, match="stemm"):
        fxquant.quantize(model, {"stemm": 4})
    with pytest.raises(ValueError, match="layer stem"):
        fxquant.quantize(model, {"stem": 9})
    with pytest.raises(ValueError, match="bits"):
        fxquant.quantize(model, 0)


def test_filter_fn_keeps_layers_float():
    model, x, names = build("conv_zoo")
    q = fxquant.quantize(model, 4, filter_fn=lambda module, name: not isinstance(module, nn.Linear))
    assert type(q.head) is nn.Linear and isinstance(q.stem, fxquant.QuantConv2d)


def test_user_mapping_extends_the_module_map():
    class MyConv(nn.Conv2d):
        pass

    class MyQuantConv(fxquant.QuantConv2d):
        _FLOAT_TYPES = (MyConv,)

    model = nn.Sequential(MyConv(3, 4, 3), nn.ReLU()).eval()
    assert type(fxquant.quantize(model, 4).get_submodule("0")) is fxquant.QuantConv2d
    mapping = {**fxquant.DEFAULT_QUANT_MODULE_MAPPING, MyConv: MyQuantConv}
    assert type(fxquant.quantize(model, 4, mapping=mapping).get_submodule("0")) is MyQuantConv


def test_quantized_modules_are_leaves_when_retraced():
    model, x, _ = build("conv_zoo")
    q = fxquant.quantize(model, 4)
    again = passes.trace(q)
    assert all(is_quantized_module(again.get_submodule(n.target))
               for n in again.graph.nodes if n.op == "call_module" and n.target in ("stem", "head"))
    with torch.no_grad():
        assert torch.equal(again(x), q(x))
