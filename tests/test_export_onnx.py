"""ONNX export with real low-bit weights (issue 16): onnxruntime computes what fxquant computes,
the file stores the codes (no float copy of a quantized weight), sizes are as promised, errors name
what is wrong."""

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import fxquant
from fxquant.core.config import QuantConfig
from fxquant.export import ONNX_NATIVE_BITS, export_onnx, onnx_predict, onnx_session, required_opset
from fxquant.export.bitstream import bitstream_nodes, container_bits, native_nodes
from fxquant.export.check import compare_onnx
from fxquant.nn.modules import PackedWeight, QuantConv2d, QuantLinear

from .models import ZOO, build
from .strategies import bit_widths, schemes, weights

TRACEABLE_ZOO = [name for name in ZOO if name != "untraceable_block"]
_CODE_TYPES = {TensorProto.UINT8: 8, TensorProto.UINT4: 4, TensorProto.UINT2: 2}


def _mixed_bits(names, offset=0):
    return {name: (i + offset) % 8 + 1 for i, name in enumerate(names)}


def _rel_diff(got, expected):
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


def _packed_modules(qmodel):
    """One packed module per weight storage (tied weights counted once)."""
    seen = {}
    for module in qmodel.modules():
        if isinstance(getattr(module, "packed_weight", None), torch.Tensor):
            seen.setdefault(id(module.packed_weight), module)
    return list(seen.values())


def _check_file(qmodel, result, packing, x):
    """Everything an exported file must satisfy."""
    model = onnx.load(result.path)
    onnx.checker.check_model(model, full_check=True)
    assert not any(i.data_location == TensorProto.EXTERNAL for i in model.graph.initializer)
    packed = _packed_modules(qmodel)
    # Codes initializers: exactly the expected container (or bit-stream) bytes.
    expected = 0
    for m in packed:
        numel = math.prod(m.weight_shape)
        width = container_bits(m.bits) if packing == "container" or m.bits in ONNX_NATIVE_BITS else m.bits
        expected += math.ceil(numel * width / 8)
    codes = [i for i in model.graph.initializer if i.name.endswith(("_codes", "_bitstream"))]
    assert sum(len(i.raw_data) for i in codes) == expected == result.weight_bytes
    assert result.ideal_bytes == sum(m.packed_weight.numel() for m in packed)
    # No float initializer (or constant) holds a quantized weight, nor its transpose.
    dequantized = [m.dequantized_weight().detach().numpy() for m in packed]
    keys = {(w.shape, w.tobytes()) for w in dequantized}
    keys |= {(w.T.shape, np.ascontiguousarray(w.T).tobytes()) for w in dequantized if w.ndim == 2}
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            array = numpy_helper.to_array(init)
            assert (array.shape, array.tobytes()) not in keys, f"float copy of a quantized weight: {init.name}"
    # onnxruntime equals fxquant at a batch size other than the export's.
    session = onnx_session(result.path)
    xb = torch.cat([x, 0.5 * x, -x])[: x.shape[0] + 1]
    with torch.no_grad():
        reference = qmodel(xb)
    got = onnx_predict(session, xb)
    assert got.shape == reference.shape
    assert _rel_diff(got, reference) <= 1e-5
    return model


@pytest.mark.parametrize("packing", ["container", "bitstream"])
@pytest.mark.parametrize("name", TRACEABLE_ZOO)
def test_zoo_mixed_widths_match_fxquant(tmp_path, name, packing):
    model, x, names = build(name)
    qmodel = fxquant.quantize(model, _mixed_bits(names))
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    code = qmodel.code
    result = export_onnx(qmodel, tmp_path / "m.onnx", example_input=x, packing=packing)
    # The caller's model is untouched.
    assert qmodel.code == code and all(torch.equal(before[k], v) for k, v in qmodel.state_dict().items())
    _check_file(qmodel, result, packing, x)
    # One exported layer per packed weight storage, each named after a quantized layer.
    assert {layer.name for layer in result.layers} <= set(names) | {"a", "b"}
    assert len(result.layers) == len(_packed_modules(qmodel)) and not result.float_layers
    assert result.opset == required_opset({layer.bits for layer in result.layers}, packing)
    if packing == "bitstream":
        assert not result.wider_layers and result.weight_bytes == result.ideal_bytes


@pytest.mark.parametrize("arch, packing", [("resnet18", "container"), ("resnet18", "bitstream"),
                                           ("mobilenet_v3_small", "container")])
def test_torchvision_mixed_widths(tmp_path, arch, packing):
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10).eval()
    names = fxquant.quantizable_layers(model)
    qmodel = fxquant.quantize(model, _mixed_bits(names, offset=3))
    x = torch.randn(2, 3, 32, 32)
    result = export_onnx(qmodel, tmp_path / "m.onnx", example_input=x, packing=packing)
    _check_file(qmodel, result, packing, x)
    assert len(result.layers) == len(names) and not result.float_layers


def test_native_widths_store_exactly_the_packed_bytes(tmp_path):
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    names = fxquant.quantizable_layers(model)
    qmodel = fxquant.quantize(model, {n: ONNX_NATIVE_BITS[i % 3] for i, n in enumerate(names)})
    result = export_onnx(qmodel, tmp_path / "m.onnx", input_shape=(1, 3, 32, 32))
    assert not result.wider_layers
    assert result.weight_bytes == result.ideal_bytes
    assert {layer.storage for layer in result.layers} == {"uint2", "uint4", "uint8"}
    # Codes + grids + float tensors + protobuf framing: the file is barely more than its payload.
    payload = result.weight_bytes + result.grid_bytes + result.float_bytes
    assert payload <= result.file_bytes <= 1.02 * payload + 20_000


def test_container_widths_are_reported(tmp_path, caplog):
    model, x, names = build("conv_zoo")
    qmodel = fxquant.quantize(model, {names[0]: 3, names[1]: 4})
    with caplog.at_level("WARNING", logger="fxquant.export"):
        result = export_onnx(qmodel, tmp_path / "m.onnx", example_input=x)
    assert [(layer.name, layer.bits, layer.stored_bits) for layer in result.wider_layers] == [(names[0], 3, 4)]
    assert names[0] in caplog.text and "bitstream" in caplog.text
    assert f"{names[0]} 3->4 bits" in result.to_text()
    assert result.opset == 21
    # Layers not quantized stay float, and are reported.
    assert set(result.float_layers) == set(names[2:])
    onnx_model = _check_file(qmodel, result, "container", x)
    float_inits = {i.name for i in onnx_model.graph.initializer if i.data_type == TensorProto.FLOAT}
    assert f"{names[2]}.weight" in float_inits


@pytest.mark.parametrize("packing", ["container", "bitstream"])
def test_half_integer_zero_points(tmp_path, packing):
    """Symmetric grids and 1-bit codes have zero points (2**b - 1) / 2: exported soundly."""
    model, x, names = build("conv_zoo")
    qmodel = fxquant.quantize(model, {names[0]: 4, names[1]: 1, names[2]: 3, names[3]: 8},
                              config=QuantConfig(scheme="symmetric"))
    zero_points = [m.weight_zero_point for m in _packed_modules(qmodel)]
    assert all((zp != zp.round()).all() for zp in zero_points)
    result = export_onnx(qmodel, tmp_path / "m.onnx", example_input=x, packing=packing)
    onnx_model = _check_file(qmodel, result, packing, x)
    ops = [n.op_type for n in onnx_model.graph.node]
    assert "DequantizeLinear" in ops


@settings(max_examples=25)  # an onnxruntime session per example
@given(weight=weights(max_channels=5, max_per_channel=37), bits=bit_widths, scheme=schemes,
       bitstream=st.booleans())
def test_decoder_subgraph_reproduces_dequantized_weight(weight, bits, scheme, bitstream):
    packed = PackedWeight.from_float(weight, bits, QuantConfig(bits=bits, scheme=scheme))
    if bitstream:
        shared = {}
        nodes, inits, code_bytes, _ = bitstream_nodes("w", packed, "out", shared)
        inits = inits + list(shared.values())
        assert code_bytes == packed.packed_weight.numel()
    else:
        nodes, inits, code_bytes, _ = native_nodes("w", packed, "out")
        assert code_bytes == math.ceil(weight.numel() * container_bits(bits) / 8)
    out_info = helper.make_tensor_value_info("out", TensorProto.FLOAT, list(weight.shape))
    graph = helper.make_graph(nodes, "g", [], [out_info], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    (out,) = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {})
    expected = packed.dequantized_weight().numpy()
    assert out.shape == expected.shape
    scale = packed.weight_scale.numpy().reshape(-1, *([1] * (expected.ndim - 1)))
    # Exact, or one rounding of s*q - s*z apart from s*(q - z) (half-integer zero points).
    assert np.all(np.abs(out - expected) <= 1e-6 * np.maximum(np.abs(expected), scale))


def test_data_dependent_control_flow_is_an_error(tmp_path):
    model, x, names = build("untraceable_block")
    qmodel = fxquant.quantize(model, 4)
    with pytest.raises(ValueError, match="data-dependent control flow"):
        export_onnx(qmodel, tmp_path / "m.onnx", example_input=x)
    assert not (tmp_path / "m.onnx").exists()


def test_argument_errors(tmp_path):
    model, x, names = build("tied")
    qmodel = fxquant.quantize(model, 2)
    with pytest.raises(ValueError, match="example_input"):
        export_onnx(qmodel, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="packing must be one of"):
        export_onnx(qmodel, tmp_path / "m.onnx", example_input=x, packing="dense")
    with pytest.raises(ValueError, match="needs opset >= 25"):
        export_onnx(qmodel, tmp_path / "m.onnx", example_input=x, opset=21)
    with pytest.raises(ValueError, match="newer than this onnx package"):
        export_onnx(qmodel, tmp_path / "m.onnx", example_input=x, opset=999)
    with pytest.raises(ValueError, match="not both"):
        export_onnx(qmodel, tmp_path / "m.onnx", example_input=x, input_shape=(1, 6))


def test_unsupported_packed_modules_are_named(tmp_path):
    class MyQuantConv(QuantConv2d):
        """A user's quantized class (custom mapping): the exporter knows no float counterpart."""

    model, x, names = build("conv_zoo")
    qmodel = fxquant.quantize(model, {"stem": 4}, mapping={nn.Conv2d: MyQuantConv, nn.Linear: QuantLinear})
    with pytest.raises(ValueError, match="stem: packed-weight module MyQuantConv"):
        export_onnx(qmodel, tmp_path / "m.onnx", example_input=x)

    class Holder(nn.Module):  # a PackedWeight called from plain Python code, not an fx graph
        def __init__(self):
            super().__init__()
            self.kernel = PackedWeight.from_float(torch.randn(4, 3), 4)

        def forward(self, x):
            return x @ self.kernel().t()

    with pytest.raises(ValueError, match="kernel: a PackedWeight outside a torch.fx graph"):
        export_onnx(Holder(), tmp_path / "m.onnx", input_shape=(2, 3))


def test_search_restricted_to_native_widths_exports_exactly(tmp_path):
    """The deployment recipe: compress(..., candidates=ONNX_NATIVE_BITS) -> no container overhead."""
    model, x, names = build("conv_zoo")
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 3, 12, 12, generator=gen), torch.randint(0, 5, (8,), generator=gen))
               for _ in range(2)]
    qmodel = fxquant.compress(model, batches, candidates=ONNX_NATIVE_BITS, verbose=False)
    bits = {layer.bits for layer in fxquant.report(qmodel).layers if layer.bits is not None}
    assert bits <= set(ONNX_NATIVE_BITS)
    result = export_onnx(qmodel, tmp_path / "m.onnx", example_input=x)
    assert not result.wider_layers and result.weight_bytes == result.ideal_bytes
    check = compare_onnx(qmodel, result.path, batches)
    assert check.agreeing == check.images == 16 and check.onnx_accuracy == check.torch_accuracy


def test_cli_export(tmp_path, capsys):
    from fxquant.cli.main import main

    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=4).eval()
    qmodel = fxquant.quantize(model, 4)
    fxquant.save(qmodel, tmp_path / "m.fxq", metadata={"model": "mobilenet_v3_small", "num_classes": 4,
                                                       "in_channels": 3, "image_size": [32, 32]})
    assert main(["export", str(tmp_path / "m.fxq"), "--onnx", str(tmp_path / "m.onnx"), "--packing",
                 "bitstream", "-q"]) == 0
    out = capsys.readouterr().out
    assert "opset 21" in out and "max relative difference" in out
    session = onnx_session(tmp_path / "m.onnx")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert _rel_diff(onnx_predict(session, x), qmodel(x)) <= 1e-5
    assert main(["export", str(tmp_path / "m.fxq"), "--onnx", str(tmp_path / "n.onnx"), "--opset", "20"]) == 1
    assert "needs opset >= 21" in capsys.readouterr().err


def _bench():
    import importlib

    return importlib.import_module("benchmarks.onnx_export")


@pytest.mark.slow
def test_benchmark_smoke_run(tmp_path):
    """The EuroSAT benchmark script end to end on random weights and data (about 10 s of CPU)."""
    out = tmp_path / "o.json"
    code = _bench().main(["--smoke", "--models", "mobilenet_v3_small", "--out-json", str(out), "--markdown",
                          str(tmp_path / "o.md"), "--rounds", "1", "--min-seconds", "0.01", "--threads", "1"])
    data = json.loads(out.read_text())
    entry = data["models"][0]
    assert code == 0 and all(entry["targets"].values())
    assert set(entry["bits_used"]) <= set(ONNX_NATIVE_BITS)
    assert set(entry["versions"]) == set(_bench().VERSIONS)
    assert "| ONNX bit-stream | .onnx |" in (tmp_path / "o.md").read_text()


def test_benchmark_markdown_from_json():
    row = {"file": ".onnx", "file_bytes": 3 * 2**20, "accuracy": 96.5, "ms_batch1": 4.0, "ratio_batch1": 1.2,
           "ms_batch64": 90.0, "ratio_batch64": 0.9}
    data = {"setup": {"date": "d", "torch": "t", "onnxruntime": "o", "threads": 2, "rounds": 9},
            "models": [{"model": "resnet18", "average_bits": 3.5, "bits_used": [2, 4, 8], "dq_weight_bytes": 10,
                        "ideal_weight_bytes": 10, "dq_grid_bytes": 2, "test_images": 5400,
                        "versions": {v: row for v in _bench().VERSIONS},
                        "targets": {"weight_bytes_le_1.05x_ideal": True, "onnx_accuracy_equals_pytorch": False}}]}
    text = _bench().render_markdown(data)
    assert "## ONNX export (EuroSAT, onnxruntime)" in text
    assert text.count("| 3.00 MiB | 96.50% | 4.00 (1.20x) | 90.0 (0.90x) |") == 5
    assert "onnx_accuracy_equals_pytorch: MISSED" in text
