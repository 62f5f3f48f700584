"""``fxquant eval``/``inspect`` on crafted files (issue 18 items 4-6): the file never chooses the code
that runs (an exact allow-list of builders) nor how much memory is allocated (every number bounded)."""

import builtins
import hashlib
import json
import os
import struct
import sys

import pytest
import torch
import torchvision

import fxquant
import fxquant.demo
from fxquant.cli import recorded
from fxquant.cli.main import main
from fxquant.demo import SYNTHETIC_VERSION, DemoCNN
from fxquant.fileformat.saveload import read_header

_PRE = struct.Struct("<8sIQ")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _rewrite_header(path, change):
    """Edit the JSON header and recompute its checksum: a crafted file, not a damaged one."""
    raw = path.read_bytes()
    magic, version, head_len = _PRE.unpack(raw[:_PRE.size])
    header = json.loads(raw[_PRE.size:_PRE.size + head_len])
    change(header)
    head = json.dumps(header).encode()
    start = _PRE.pack(magic, version, len(head))
    path.write_bytes(start + head + hashlib.sha256(start + head).digest() + raw[_PRE.size + head_len + 32:])


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory):
    """A small DemoCNN file with the metadata ``fxquant demo`` writes (synthetic data, 3 images a class)."""
    torch.manual_seed(0)
    model = DemoCNN(10, in_channels=13, width=4).eval()
    path = tmp_path_factory.mktemp("demo") / "demo.fxq"
    fxquant.save(fxquant.quantize(model, 8), path, metadata={
        "created_by": "fxquant demo", "model": "fxquant.demo:DemoCNN",
        "model_kwargs": {"in_channels": 13, "width": 4}, "num_classes": 10, "in_channels": 13,
        "image_size": [8, 8], "mean": [0.0] * 13, "std": [1.0] * 13, "split_seed": 0, "test_fraction": 0.2,
        "data_kind": "synthetic", "synthetic": {"per_class": 5, "size": 8, "seed": 0, "version": SYNTHETIC_VERSION}})
    return path


@pytest.fixture
def crafted(demo_file, tmp_path, monkeypatch):
    """``craft(**metadata changes)`` -> path of a copy of the demo file with that metadata."""
    monkeypatch.chdir(tmp_path)

    def craft(**changes):
        path = tmp_path / "crafted.fxq"
        path.write_bytes(demo_file.read_bytes())
        _rewrite_header(path, lambda h: h["metadata"].update(changes))
        return path
    return craft


def test_the_allow_listed_demo_model_is_rebuilt_from_the_file(demo_file, capsys):
    code, out, err = run(capsys, "eval", demo_file)
    assert code == 0, err
    assert "held-out test split: 10 images" in out and "8.00 average bits" in out


@pytest.fixture
def tripwires(monkeypatch):
    """Every callable an attack from the issue reached records its call instead of running."""
    called = []

    def trap(name):
        def tripped(*args, **kwargs):
            called.append(name)
            raise RuntimeError(f"{name} was called")
        return tripped

    for owner, name in [(os, "abort"), (os, "fork"), (os, "system"), (sys, "exit"), (builtins, "input"),
                        (fxquant.demo, "run_demo")]:
        monkeypatch.setattr(owner, name, trap(name))
    import fxquant.cli.main as cli_main

    monkeypatch.setattr(cli_main, "main", trap("main"))
    return called


@pytest.mark.parametrize("spec", [
    "fxquant.cli_models:os.abort", "fxquant.cli:sys.exit", "fxquant.cli_models:pyinspect.builtins.input",
    "fxquant.demo:run_demo", "fxquant.cli:main", "os:fork", "os.fork",
    "fxquant.cli.main:main", "fxquant.cli.models:os.abort", "fxquant.cli.main:sys.exit",
    "fxquant.cli.models:pyinspect.builtins.input", "fxquant.demo:DemoCNN.__init__", "fxquant.demo:os.system",
    "fxquant.demo:DemoCNN ", "torchvision.models:resnet18",
])
def test_a_file_never_chooses_the_code_eval_runs(crafted, tripwires, capsys, spec):
    path = crafted(model=spec)
    code, out, err = run(capsys, "eval", path)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "pass --model" in err and len(err) < 700
    assert tripwires == []


@pytest.mark.parametrize("spec", ["fxquant.cli.main:main", "os:fork", "fxquant.demo:run_demo",
                                  "fxquant.cli.models:os.abort"])
def test_a_file_never_chooses_the_code_export_runs(crafted, tripwires, capsys, tmp_path, spec):
    """``fxquant export`` rebuilds the model through eval's allow-list and bounds."""
    path = crafted(model=spec)
    code, out, err = run(capsys, "export", path, "--onnx", tmp_path / "m.onnx")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "pass --model" in err and not (tmp_path / "m.onnx").exists()
    assert tripwires == []


def test_export_bounds_what_it_reads(crafted, capsys, tmp_path):
    code, _, err = run(capsys, "export", crafted(num_classes=10**7), "--onnx", tmp_path / "m.onnx")
    assert code == 1 and "num_classes" in err


def test_the_allow_list_is_one_table_of_exact_names():
    assert "fxquant.demo:DemoCNN" in recorded.RECORDED_BUILDERS
    assert recorded.recorded_builder("fxquant.demo:DemoCNN", "f").build(3, {"width": 2}).head.out_features == 3
    assert recorded.recorded_builder("resnet18", "f").target == "torchvision.models:resnet18"
    for spec in ("resnet18.fc", ":resnet18", "torchvision:resnet18", "fxquant.demo:DemoCNN.forward", "torchvision.models:get_model", ""):
        with pytest.raises(recorded.CliError, match="pass --model"):
            recorded.recorded_builder(spec, "f")


@pytest.mark.parametrize("changes, message", [
    ({"num_classes": 1e6}, "num_classes"),
    ({"num_classes": 10**7}, "num_classes"),
    ({"num_classes": 50_000}, "cannot hold"),  # within the bound, but far more than the file stores
    ({"model": "resnet18", "model_kwargs": {}, "num_classes": 1000}, "cannot hold"),
    ({"model": "resnet18", "model_kwargs": {"width_per_group": 4096}}, "width_per_group"),
    ({"model_kwargs": {"width": 4096}}, "width"),
    ({"model_kwargs": {"width": 4, "in_channels": 13, "extra": 1}}, "extra"),
    ({"model_kwargs": {"width": True}}, "width"),
    ({"synthetic": {"per_class": 4096, "size": 4096, "seed": 0, "version": 1}}, "synthetic"),
    ({"synthetic": {"per_class": 100_000, "size": 64, "seed": 0, "version": 1}}, "synthetic"),
    ({"synthetic": {"per_class": 5, "size": 8, "seed": 0, "version": 1, "dtype": "float64"}}, "synthetic"),
    ({"synthetic": {"per_class": 5, "size": 8, "seed": 0, "version": 99}}, "version"),
    ({"image_size": [100_000, 100_000]}, "image_size"),
    ({"image_size": "64"}, "image_size"),
    ({"mean": [0.0] * 100_000}, "mean"),
    ({"std": [0.0] * 13}, "std"),
    ({"std": [float("nan")] * 13}, "std"),
    ({"test_fraction": 0.0}, "test_fraction"),
    ({"split_seed": -1}, "split_seed"),
    ({"split_seed": 10**30}, "int64 range"),
])
def test_every_number_from_the_file_is_bounded_before_allocating(crafted, capsys, monkeypatch, changes, message):
    devices = []
    real_build = recorded.Builder.build

    def spy(self, num_classes, kwargs):
        model = real_build(self, num_classes, kwargs)
        devices.extend({p.device.type for p in model.parameters()})
        return model

    monkeypatch.setattr(recorded.Builder, "build", spy)
    code, out, err = run(capsys, "eval", crafted(**changes))
    assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err
    assert set(devices) <= {"meta"}  # nothing was built in memory


def test_model_size_check_accepts_the_real_architecture(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1(num_classes=4).eval()
    fxquant.save(fxquant.quantize(model, 2), tmp_path / "s.fxq")
    header = read_header(tmp_path / "s.fxq")
    builder = recorded.recorded_builder("squeezenet1_1", "f")
    recorded.check_model_size(lambda: builder.build(4, {}), header, "f", "squeezenet1_1")
    with pytest.raises(recorded.CliError, match="cannot hold"):
        recorded.check_model_size(lambda: builder.build(40_000, {}), header, "f", "squeezenet1_1")


@pytest.mark.parametrize("change", [
    lambda h: h.__setitem__("report", []),
    lambda h: h.pop("report"),
    lambda h: h["report"].__setitem__("layers", [{"name": 1}]),
    lambda h: h["report"].__setitem__("layers", 5),
    lambda h: h["report"].__setitem__("average_bits", "x"),
    lambda h: h["report"].__setitem__("packed_bytes", "x"),
    lambda h: h["report"].__setitem__("float32_bytes", None),
    lambda h: h["metadata"].__setitem__("image_size", 5),
    lambda h: h["metadata"].__setitem__("model", {"a": [1] * 10_000}),
    lambda h: h["metadata"].__setitem__("num_classes", "x" * 100_000),
])
def test_inspect_never_raises_raw_errors_on_malformed_report_or_metadata(crafted, capsys, change):
    path = crafted()
    _rewrite_header(path, change)
    for argv in (["inspect", path], ["inspect", path, "--json"]):
        code, out, err = run(capsys, *argv)
        assert code in (0, 1), err
        assert "--debug" not in err and len(err) < 700  # fxquant's own message, not a raw exception
        assert max((len(line) for line in out.splitlines()), default=0) < 1000 or "--json" in argv
        if code == 1:
            assert "malformed header" in err
