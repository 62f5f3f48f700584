"""fxquant.save / fxquant.load: round trips, report equality, error cases, file size."""

import ast
import hashlib
import inspect
import json
import pickle
import struct
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

import fxquant
import fxquant.fileformat.container
import fxquant.fileformat.header
from fxquant import passes
from fxquant import FxqFormatError, QuantConfig
from fxquant.fileformat.saveload import FORMAT_VERSION, MAGIC, read_header
from tests.models import build

_PRE = struct.Struct("<8sIQ")


def _round_trip(q, tmp_path, fresh, name="model.fxq"):
    path = tmp_path / name
    size = fxquant.save(q, path)
    assert size == path.stat().st_size
    return fxquant.load(path, fresh), path


def _assert_same(q, loaded, x):
    with torch.no_grad():
        assert torch.equal(q(x), loaded(x))  # bit-identical
    assert fxquant.report(loaded).to_dict() == fxquant.report(q).to_dict()
    assert passes.layer_infos(loaded) == passes.layer_infos(q)
    saved_sd, loaded_sd = q.state_dict(), loaded.state_dict()
    assert list(saved_sd) == list(loaded_sd)
    for key, tensor in saved_sd.items():
        assert tensor.dtype == loaded_sd[key].dtype and torch.equal(tensor, loaded_sd[key]), key
    assert [(n, m.training) for n, m in loaded.named_modules()] == [(n, m.training) for n, m in q.named_modules()]


def _labelled_by_model(model, x, batch=16):
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, x.shape[0], batch)]


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["conv_zoo", "tiny_vit", "tied", "functional", "untraceable_block",
                                  "spectral1d", "hyperspectral3d", "called_twice"])
def test_fixed_bits_round_trip_is_bit_identical(name, tmp_path):
    model, x, _ = build(name)
    q = fxquant.quantize(model, 3)
    loaded, _ = _round_trip(q, tmp_path, build(name, seed=11)[0])  # other weights: irrelevant
    _assert_same(q, loaded, x)
    assert type(loaded).__name__ == type(q).__name__


def test_mixed_bits_float_layers_and_per_tensor_config(tmp_path):
    model, x, _ = build("conv_zoo")
    bits = {"stem": 8, "grouped": 1, "depthwise": None, "pointwise": 2, "tiny": 5}  # head: float too
    q = fxquant.quantize(model, bits, config=QuantConfig(granularity="per_tensor", scheme="symmetric"))
    loaded, path = _round_trip(q, tmp_path, build("conv_zoo", seed=3)[0])
    _assert_same(q, loaded, x)
    header = read_header(path)
    assert header["bits"] == {**bits, "head": None}
    assert header["quant_config"]["granularity"] == "per_tensor"
    assert loaded.get_submodule("grouped").weight_scale.numel() == 1


def test_leaf_modules_and_custom_mapping_round_trip(tmp_path):
    class MyQuantLinear(fxquant.QuantLinear):
        pass

    mapping = {**fxquant.DEFAULT_QUANT_MODULE_MAPPING, nn.Linear: MyQuantLinear}
    model, x, _ = build("tiny_vit")
    q = fxquant.quantize(model, 4, leaf_modules=["mlp"], mapping=mapping)
    path = tmp_path / "m.fxq"
    fxquant.save(q, path)
    assert read_header(path)["model"]["leaf_modules"] == ["mlp"]
    err = _load_error(path, build("tiny_vit", seed=4)[0])  # without the mapping
    assert "'attn.out_proj'" in str(err) and "mapping=" in str(err)
    loaded = fxquant.load(path, build("tiny_vit", seed=4)[0], mapping=mapping)
    _assert_same(q, loaded, x)
    assert type(loaded.head) is MyQuantLinear


def test_weights_of_the_target_model_may_be_non_finite(tmp_path):
    model, x, _ = build("conv_zoo")
    q = fxquant.quantize(model, 4)
    target, _, _ = build("conv_zoo", seed=1)
    with torch.no_grad():
        for p in target.parameters():
            p.fill_(float("nan"))
    loaded, _ = _round_trip(q, tmp_path, target)
    _assert_same(q, loaded, x)
    assert all(torch.isnan(p).all() for p in target.parameters())  # untouched


def test_tied_weights_are_stored_once_and_stay_shared(tmp_path):
    model, x, _ = build("tied")
    q = fxquant.quantize(model, 4)
    loaded, path = _round_trip(q, tmp_path, build("tied", seed=5)[0])
    _assert_same(q, loaded, x)
    for buf in ("packed_weight", "weight_scale", "weight_zero_point"):
        assert getattr(loaded.a, buf) is getattr(loaded.b, buf)
    entries = read_header(path)["tensors"]
    assert ["a.packed_weight", "b.packed_weight"] in [e["keys"] for e in entries]
    sizes = fxquant.state_dict_bytes(q.state_dict())
    assert sum(e["nbytes"] for e in entries) == sizes["integer"] + sizes["float"]


@pytest.mark.parametrize("name", ["conv_zoo", "tiny_vit"])
def test_searched_model_round_trip_keeps_report_and_search_result(name, tmp_path):
    model, x, _ = build(name)
    calib = _labelled_by_model(model, torch.randn(32, *x.shape[1:]))
    q = fxquant.compress(model, calib, method="paper", margin="fixed", t_init=5.0, verbose=False)
    loaded, _ = _round_trip(q, tmp_path, build(name, seed=2)[0])
    _assert_same(q, loaded, x)
    assert loaded.meta["fxquant"] == q.meta["fxquant"]
    assert str(fxquant.report(loaded)) == str(fxquant.report(q))


def test_resnet18_searched_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(16, 3, 32, 32)
    q = fxquant.compress(model, _labelled_by_model(model, x), candidates=(2, 4, 8), method="paper", strategy="bisect",
                         verbose=False)
    loaded, _ = _round_trip(q, tmp_path, torchvision.models.resnet18(num_classes=10).eval())
    _assert_same(q, loaded, x)
    assert loaded.meta["fxquant"] == q.meta["fxquant"]


def test_resnet18_4bit_file_size_within_bound(tmp_path):
    torch.manual_seed(0)
    q = fxquant.quantize(torchvision.models.resnet18(num_classes=10).eval(), 4)
    size = fxquant.save(q, tmp_path / "r18.fxq")
    storage = fxquant.weight_storage(q)
    sd = fxquant.state_dict_bytes(q.state_dict())
    packed = storage.packed_bytes + storage.grid_bytes  # codes + scales/zero points
    non_quantized = sd["integer"] + sd["float"] - packed  # biases, BN, num_batches_tracked
    bound = (packed + non_quantized) * 1.02 + 64 * 1024
    assert packed + non_quantized < size <= bound
    loaded = fxquant.load(tmp_path / "r18.fxq", torchvision.models.resnet18(num_classes=10).eval())
    _assert_same(q, loaded, torch.randn(2, 3, 32, 32))


def test_save_is_deterministic(tmp_path):
    model, _, _ = build("tiny_vit")
    q = fxquant.quantize(model, 4)
    fxquant.save(q, tmp_path / "a.fxq")
    fxquant.save(q, tmp_path / "b.fxq")
    assert (tmp_path / "a.fxq").read_bytes() == (tmp_path / "b.fxq").read_bytes()


def test_load_does_not_modify_the_given_model(tmp_path):
    model, x, _ = build("conv_zoo")
    path = tmp_path / "m.fxq"
    fxquant.save(fxquant.quantize(model, 4), path)
    target = build("conv_zoo", seed=9)[0].train()  # other weights, other mode
    before = {k: v.clone() for k, v in target.state_dict().items()}
    loaded = fxquant.load(path, target)
    after = target.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert target.training and all(m.training for m in target.modules())
    assert not loaded.training  # the saved model's mode
    assert not any(fxquant.nn.modules.is_quantized_module(m) for m in target.modules())


def test_loaded_model_is_always_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    q = fxquant.quantize(torchvision.models.resnet18(num_classes=10).eval(), 4)
    q.train()
    q.layer1.eval()
    loaded, _ = _round_trip(q, tmp_path, torchvision.models.resnet18(num_classes=10).eval())
    assert not any(m.training for m in loaded.modules())  # a file never puts BatchNorm in train mode


def test_read_header_needs_no_model(tmp_path):
    model, _, _ = build("conv_zoo")
    q = fxquant.quantize(model, 4)
    fxquant.save(q, tmp_path / "m.fxq")
    header = read_header(tmp_path / "m.fxq")
    assert header["format_version"] == FORMAT_VERSION
    assert header["fxquant_version"] == fxquant.__version__ and header["torch_version"] == torch.__version__
    assert header["report"] == json.loads(fxquant.report(q).to_json())


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model, x, _ = build("tiny_vit")
    q = fxquant.quantize(model, 4)
    fxquant.save(q, tmp_path / "m.fxq")

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during fxquant.load")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = fxquant.load(tmp_path / "m.fxq", build("tiny_vit", seed=1)[0])
    assert torch.equal(loaded(x), q(x))
    for module in (fxquant.fileformat.saveload, fxquant.fileformat.container,
                   fxquant.fileformat.header):  # every module on the read path
        tree = ast.parse(inspect.getsource(module))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names} | {node.module for node in ast.walk(tree)
                                                if isinstance(node, ast.ImportFrom)}
        assert not imported & {"pickle", "marshal", "dill", "cloudpickle", "shelve"}, module.__name__


# ----------------------------------------------------------------------------- damaged files


@pytest.fixture
def saved(tmp_path):
    model, _, _ = build("conv_zoo")
    path = tmp_path / "m.fxq"
    fxquant.save(fxquant.quantize(model, 4), path)
    return path


def _header_len(raw: bytes) -> int:
    return _PRE.unpack_from(raw)[2]


def _load_error(path, model=None) -> FxqFormatError:
    with pytest.raises(FxqFormatError) as info:
        fxquant.load(path, model if model is not None else build("conv_zoo")[0])
    assert isinstance(info.value, ValueError)
    return info.value


def test_truncated_file_at_every_section(saved):
    raw = saved.read_bytes()
    h = _header_len(raw)
    for cut in (0, 3, 8, 15, 19, 20, 20 + h // 2, 20 + h, 20 + h + 31, 20 + h + 32 + 7, len(raw) - 1):
        saved.write_bytes(raw[:cut])
        err = _load_error(saved)
        assert err.reason == "truncated" and "truncated" in str(err), (cut, err)


def test_flipped_data_byte_is_a_checksum_error(saved):
    raw = bytearray(saved.read_bytes())
    raw[-5] ^= 0x01
    saved.write_bytes(raw)
    err = _load_error(saved)
    assert err.reason == "checksum" and "data checksum" in str(err)


def test_flipped_header_byte_is_a_checksum_error(saved):
    raw = bytearray(saved.read_bytes())
    raw[20 + _header_len(raw) // 2] ^= 0x20
    saved.write_bytes(raw)
    err = _load_error(saved)
    assert err.reason == "checksum" and "header checksum" in str(err)


def test_trailing_bytes_are_rejected(saved):
    saved.write_bytes(saved.read_bytes() + b"\0" * 16)
    assert "16 unexpected bytes" in str(_load_error(saved))


def test_random_bytes_are_not_an_fxquant_file(tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    err = _load_error(path)
    assert err.reason == "foreign" and "not an fxquant file" in str(err)


def test_torch_save_file_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(build("conv_zoo")[0].state_dict(), path)
    err = _load_error(path)
    assert err.reason == "foreign" and "torch.save" in str(err)


def test_newer_format_version_is_refused(saved):
    raw = bytearray(saved.read_bytes())
    struct.pack_into("<I", raw, len(MAGIC), FORMAT_VERSION + 1)
    saved.write_bytes(raw)
    err = _load_error(saved)
    assert err.reason == "version"
    assert f"version {FORMAT_VERSION + 1}" in str(err) and "upgrade fxquant" in str(err)


def _rewrite_header(path, edit):
    """Apply ``edit`` to the header and write back valid checksums (a crafted, not a damaged, file)."""
    raw = path.read_bytes()
    magic, version, h = _PRE.unpack_from(raw)
    header = json.loads(raw[_PRE.size:_PRE.size + h])
    edit(header)
    head = json.dumps(header).encode()
    pre = _PRE.pack(magic, version, len(head))
    path.write_bytes(pre + head + hashlib.sha256(pre + head).digest() + raw[_PRE.size + h + 32:])


@pytest.mark.parametrize("edit, message", [
    (lambda h: h["tensors"][0].update(dtype="object"), "dtype 'object'"),
    (lambda h: h["tensors"][0].update(offset=10**9), "outside"),
    (lambda h: h["tensors"][0].update(shape=[10**6]), "needs"),
    (lambda h: h["layer_infos"][0].update(n_p="__import__('os')"), "n_p should be num"),
    (lambda h: h.pop("bits"), "no field 'bits'"),
    (lambda h: h["bits"].update(stem=9), "expected 1..8"),
    (lambda h: h.update(format_version=7), "format_version"),
    (lambda h: h["quant_config"].update(scheme="evil"), "scheme"),
])
def test_crafted_headers_are_rejected_with_a_clear_error(saved, edit, message):
    _rewrite_header(saved, edit)
    err = _load_error(saved)
    assert message in str(err), err


# ----------------------------------------------------------------------------- other architectures


def _stack(widths=(8, 8), classes=4, act=nn.ReLU, stride=1):
    layers, c = [], 3
    for i, w in enumerate(widths, 1):
        layers += [(f"conv{i}", nn.Conv2d(c, w, 3, stride=stride, padding=1)), (f"bn{i}", nn.BatchNorm2d(w)),
                   (f"act{i}", act())]
        c = w
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("head", nn.Linear(c, classes))]
    return nn.Sequential(OrderedDict(layers)).eval()


@pytest.fixture
def stack_file(tmp_path):
    path = tmp_path / "stack.fxq"
    fxquant.save(fxquant.quantize(_stack(), 4), path)
    return path


@pytest.mark.parametrize("other, names", [
    (lambda: _stack(widths=(8,)), ["'conv2'", "does not have"]),  # missing layer
    (lambda: _stack(widths=(8, 8, 8)), ["'conv3'", "does not hold"]),  # extra layer
    (lambda: _stack(classes=5), ["'head'", "(4, 8)", "(5, 8)"]),  # shape mismatch
    (lambda: _stack(widths=(8, 6)), ["'conv2'", "shape"]),
    (lambda: nn.Sequential(OrderedDict([("net", _stack())])), ["'conv1'", "net.conv1"]),  # other names
    (lambda: _stack(act=nn.GELU), ["'act1'", "GELU"]),  # same tensors, other module
    (lambda: _stack(stride=2), ["'conv1'", "stride=(2, 2)"]),  # same tensors, other settings
])
def test_other_architecture_is_refused_naming_the_layer(stack_file, other, names):
    err = _load_error(stack_file, other())
    assert err.reason == "architecture" and "architecture mismatch" in str(err)
    for name in names:
        assert name in str(err), err


def test_extra_non_layer_tensor_is_named(tmp_path):
    class Scaled(nn.Module):
        def __init__(self, extra):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            if extra:
                self.register_buffer("temperature", torch.tensor(2.0))

        def forward(self, x):
            x = self.conv(x)
            return x / self.temperature if hasattr(self, "temperature") else x  # unused tensors are not traced

    fxquant.save(fxquant.quantize(Scaled(False).eval(), 4), tmp_path / "s.fxq")
    err = _load_error(tmp_path / "s.fxq", Scaled(True).eval())
    assert "'temperature'" in str(err) and "does not hold" in str(err)


def test_tied_file_onto_untied_model_is_refused(tmp_path):
    model, _, _ = build("tied")
    fxquant.save(fxquant.quantize(model, 4), tmp_path / "t.fxq")
    untied, _, _ = build("tied")
    untied.b.weight = nn.Parameter(untied.a.weight.detach().clone())
    err = _load_error(tmp_path / "t.fxq", untied)
    assert "'b'" in str(err)


def test_load_rejects_a_compressed_model_and_non_modules(stack_file):
    with pytest.raises(ValueError, match="already compressed"):
        fxquant.load(stack_file, fxquant.quantize(_stack(), 4))
    with pytest.raises(TypeError, match="model must be an nn.Module, got dict"):
        fxquant.load(stack_file, {"conv1.weight": torch.zeros(1)})


def test_save_rejects_models_without_annotations(tmp_path):
    with pytest.raises(ValueError, match="fxquant.quantize or fxquant.compress"):
        fxquant.save(_stack(), tmp_path / "x.fxq")
    with pytest.raises(ValueError, match="no fxquant annotations"):
        fxquant.save(torch.fx.symbolic_trace(_stack()), tmp_path / "x.fxq")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_files_from_before_binary_scale_read_as_max():
    """Headers written before QuantConfig.binary_scale existed came from the max|w| 1-bit code."""
    from fxquant.fileformat.header import _quant_config_from

    assert _quant_config_from({"bits": 4}).binary_scale == "max"
    assert _quant_config_from({"bits": 4, "binary_scale": "mean"}).binary_scale == "mean"
