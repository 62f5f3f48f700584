"""The ``fxquant`` command line: help/version, ``demo --quick`` end to end, compress/inspect/eval
on a custom ``module:function`` model and a generated ImageFolder, one-line errors, and the
``metadata`` field that ``fxquant.save`` stores for ``eval``."""

import contextlib
import hashlib
import io
import json
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fxquant
from fxquant.cli.main import CliError, main
from fxquant.data.eurosat import EUROSAT_MEAN, EUROSAT_STD, stratified_split
from fxquant.demo import DemoCNN
from fxquant.reporting.report import CompressionReport
from fxquant.fileformat.saveload import FxqFormatError, read_header
from fxquant.fileformat.header import report_dict

TINY_MODULE = "fxq_cli_tiny_models"
TINY_SOURCE = '''
from torch import nn


def tiny(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
'''
CLASSES = ("alpha", "beta", "gamma")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_captured(*argv):
    """``main`` with stdout/stderr captured, usable outside function-scoped fixtures."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


# ----------------------------------------------------------------------------- help, version


def test_help_and_version(capsys):
    code, out, err = run(capsys, "--help")
    assert code == 0 and err == ""
    for command in ("compress", "inspect", "eval", "demo"):
        assert command in out
    for command in ("compress", "inspect", "eval", "demo"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and "usage: fxquant " + command in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"fxquant {fxquant.__version__}"
    code, out, _ = run(capsys)  # no command: the help
    assert code == 0 and "COMMAND" in out


def test_version_subprocess():
    exe = shutil.which("fxquant")
    cmd = [exe, "--version"] if exe else [sys.executable, "-m", "fxquant", "--version"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"fxquant {fxquant.__version__}"


# ----------------------------------------------------------------------------- demo


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """Two ``demo --quick`` runs with the same seed, the second quiet."""
    first, second = tmp_path_factory.mktemp("demo1"), tmp_path_factory.mktemp("demo2")
    run1 = run_captured("demo", "--quick", "--out", first)
    run2 = run_captured("demo", "--quick", "--seed", 0, "--quiet", "--out", second)
    return (first, *run1), (second, *run2)


def test_demo_quick_end_to_end(demo_runs, capsys):
    (out_dir, code, stdout, stderr), _ = demo_runs
    assert code == 0, stderr
    assert "SYNTHETIC" in stdout and "held-out test accuracy" in stdout and "average bits" in stdout
    assert "epoch 1/3" in stderr and "fxquant search" in stderr  # progress on stderr
    for name in ("model.fxq", "float_model.pt", "report.json", "graph.svg", "graph.html", "report.png"):
        assert (out_dir / name).is_file() and (out_dir / name).stat().st_size > 0, name

    data = json.loads((out_dir / "report.json").read_text())
    report = CompressionReport.from_dict(data)
    assert [lay.name for lay in report.layers] == ["conv1", "conv2", "conv3", "conv4", "head"]
    summary, meta = data["demo"], data["metadata"]
    assert meta["model"] == "fxquant.demo:DemoCNN" and meta["data_kind"] == "synthetic"

    # The packed model loads back onto a fresh DemoCNN with the recorded settings.
    header = read_header(out_dir / "model.fxq")
    assert header["metadata"] == meta
    loaded = fxquant.load(out_dir / "model.fxq", DemoCNN(meta["num_classes"], **meta["model_kwargs"]))
    assert json.loads(fxquant.report(loaded).to_json()) == report_dict(header)
    assert {lay.name: lay.bits for lay in fxquant.report(loaded).layers} == summary["bits"]

    code, out, err = run(capsys, "inspect", out_dir / "model.fxq")
    assert code == 0 and err == ""
    assert "fxquant.demo:DemoCNN" in out and "conv4" in out and "float32 equivalent" in out

    # eval regenerates the synthetic data from the metadata: same held-out numbers as the demo.
    code, out, err = run(capsys, "eval", out_dir / "model.fxq", "--checkpoint", out_dir / "float_model.pt")
    assert code == 0, err
    assert f"top-1 {summary['compressed_test_accuracy']:.2f}%" in out
    assert f"top-1 {summary['float_test_accuracy']:.2f}%" in out
    assert f"{summary['test_images']:,} images" in out


def test_demo_is_deterministic_and_quiet(demo_runs):
    (dir1, _, _, _), (dir2, code, stdout, stderr) = demo_runs
    assert code == 0
    assert stderr == ""  # --quiet: no progress
    assert (dir2 / "report.png").is_file() and (dir2 / "graph.svg").is_file()
    one, two = (json.loads((d / "report.json").read_text()) for d in (dir1, dir2))
    for key in ("seconds",):
        one.pop(key), two.pop(key)
    one["demo"].pop("fxq_file_bytes"), two["demo"].pop("fxq_file_bytes")  # the header holds the search time
    assert one == two
    a, b = (torch.load(d / "float_model.pt", weights_only=True)["state_dict"] for d in (dir1, dir2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_demo_without_matplotlib_fails_up_front(tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
        code, stdout, stderr = run_captured("demo", "--quick", "--out", tmp_path / "out")
    assert code == 1 and "needs matplotlib" in stderr and "pip install matplotlib" in stderr
    assert stdout == "" and not list((tmp_path / "out").glob("*"))  # nothing trained, nothing written


# ----------------------------------------------------------------------------- compress / inspect / eval


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A tmp cwd holding a model module, a tiny ImageFolder (3 classes x 5 PNGs) and float checkpoints."""
    (tmp_path / f"{TINY_MODULE}.py").write_text(TINY_SOURCE)
    monkeypatch.chdir(tmp_path)
    sys.modules.pop(TINY_MODULE, None)
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        folder = tmp_path / "images" / name
        folder.mkdir(parents=True)
        for i in range(5):
            pixels = np.clip(rng.normal(60 + 70 * c, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
    torch.manual_seed(0)
    namespace = {}
    exec(TINY_SOURCE, namespace)  # noqa: S102 - our own source, to build the float weights
    model = namespace["tiny"](num_classes=3)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": model.state_dict(), "model": f"{TINY_MODULE}:tiny", "num_classes": 3,
                "split_seed": 0}, tmp_path / "with_meta.pt")
    yield tmp_path, model.eval()
    sys.modules.pop(TINY_MODULE, None)


def _expected_test_accuracy(root, model):
    """Top-1 on the held-out 20% (seed 0), computed independently of the CLI."""
    images, labels = [], []
    for c, name in enumerate(CLASSES):
        for path in sorted((root / "images" / name).glob("*.png")):
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(c)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(EUROSAT_MEAN).view(1, 3, 1, 1)) / torch.tensor(EUROSAT_STD).view(1, 3, 1, 1)
    y = torch.tensor(labels)
    _, test_idx = stratified_split(y, 0.2, 0)
    with torch.no_grad():
        pred = model(x[test_idx]).argmax(1)
    return 100.0 * float((pred == y[test_idx]).float().mean()), test_idx


def test_compress_inspect_eval_custom_model(workspace, capsys, monkeypatch):
    root, model = workspace
    seen = {}
    real_compress = fxquant.compress

    def spy(model, calib, **kwargs):
        seen["calib"] = calib.indices.clone()
        return real_compress(model, calib, **kwargs)

    monkeypatch.setattr(fxquant, "compress", spy)
    code, out, err = run(capsys, "compress", "--model", f"{TINY_MODULE}:tiny", "--checkpoint", "plain.pt",
                         "--num-classes", 3, "--data", "images", "--out", "out/tiny.fxq", "--method", "paper",
                         "--mode", "fixed", "--margin", 1.0, "--report", "out/report.json", "--graph", "out/graph.svg")
    assert code == 0, err
    assert "wrote out/tiny.fxq" in out and "[1/3]" in err  # one progress line per layer
    for name in ("tiny.fxq", "report.json", "graph.svg", "graph.html"):
        assert (root / "out" / name).is_file(), name

    expected_acc, test_idx = _expected_test_accuracy(root, model)
    # Calibration images come only from the training part of the seeded split.
    assert len(seen["calib"]) == 12 and not set(seen["calib"].tolist()) & set(test_idx.tolist())

    meta = read_header(root / "out" / "tiny.fxq")["metadata"]
    assert meta["model"] == f"{TINY_MODULE}:tiny" and meta["num_classes"] == 3
    assert meta["image_size"] == [8, 8] and meta["split_seed"] == 0 and meta["classes"] == list(CLASSES)
    assert meta["calib_size"] == 12 and meta["data_kind"] == "imagefolder"
    report = json.loads((root / "out" / "report.json").read_text())
    assert report["settings"]["margin"] == "fixed" and report["settings"]["t_init"] == 1.0
    assert CompressionReport.from_dict(report).average_bits == pytest.approx(report["average_bits"])

    code, out, err = run(capsys, "inspect", "out/tiny.fxq")
    assert code == 0 and err == ""
    assert f"{TINY_MODULE}:tiny (3 classes, input 3x8x8)" in out and "average bits" in out
    code, out, err = run(capsys, "inspect", "out/tiny.fxq", "--json")
    info = json.loads(out)
    assert info["sizes"]["file_bytes"] == (root / "out" / "tiny.fxq").stat().st_size
    assert info["sizes"]["float32_model_bytes"] == sum(t.numel() * 4 for t in model.state_dict().values())

    # A file never makes fxquant import code: the custom factory must be named by the user.
    code, out, err = run(capsys, "eval", "out/tiny.fxq", "--data", "images")
    assert code == 1 and len(err.strip().splitlines()) == 1 and f"--model {TINY_MODULE}:tiny" in err
    code, out, err = run(capsys, "eval", "out/tiny.fxq", "--data", "images", "--checkpoint", "plain.pt",
                         "--model", f"{TINY_MODULE}:tiny")
    assert code == 0, err
    assert "held-out test split: 3 images" in out
    assert f"float plain.pt: top-1 {expected_acc:.2f}%" in out
    q = fxquant.load(root / "out" / "tiny.fxq", model)
    q_acc, _ = _expected_test_accuracy(root, q)
    assert f"compressed out/tiny.fxq: top-1 {q_acc:.2f}%" in out


def test_compress_reads_model_and_classes_from_checkpoint(workspace, capsys):
    root, _ = workspace
    code, out, err = run(capsys, "-q", "compress", "--checkpoint", "with_meta.pt", "--data", "images",
                         "--out", "m.fxq", "--calib-size", 6)
    assert code == 0, err
    assert err == ""  # --quiet
    meta = read_header(root / "m.fxq")["metadata"]
    assert meta["model"] == f"{TINY_MODULE}:tiny" and meta["num_classes"] == 3 and meta["calib_size"] == 6


def test_eval_with_model_override_for_a_file_without_metadata(workspace, capsys):
    root, model = workspace
    fxquant.save(fxquant.quantize(model, 8), root / "bare.fxq")  # no metadata: eval needs --model
    code, out, err = run(capsys, "eval", "bare.fxq", "--data", "images")
    assert code == 1 and err.count("\n") == 1 and "records no model spec" in err
    code, out, err = run(capsys, "eval", "bare.fxq", "--data", "images", "--model", f"{TINY_MODULE}:tiny",
                         "--num-classes", 3)
    assert code == 0, err
    q_acc, _ = _expected_test_accuracy(root, fxquant.quantize(model, 8))
    assert f"top-1 {q_acc:.2f}% (8.00 average bits)" in out


@pytest.mark.parametrize("argv, message", [
    (["compress", "--model", "resnet18", "--checkpoint", "missing.pt", "--data", "images", "--out", "o.fxq"],
     "fxquant: error: no checkpoint at missing.pt"),
    (["compress", "--model", "resnet99", "--checkpoint", "plain.pt", "--data", "images", "--out", "o.fxq"],
     "fxquant: error: unknown model 'resnet99'"),
    (["compress", "--model", f"{TINY_MODULE}:tiny", "--checkpoint", "plain.pt", "--data", "no/such/dir",
      "--out", "o.fxq"], "fxquant: error: no data at no/such/dir"),
    (["compress", "--model", f"{TINY_MODULE}:nope", "--checkpoint", "plain.pt", "--data", "images",
      "--out", "o.fxq"], "has no attribute 'nope'"),
    (["compress", "--model", f"{TINY_MODULE}:tiny", "--checkpoint", "plain.pt", "--data", "images",
      "--out", "o.fxq"], "does not fit"),  # 10 classes by default, the checkpoint has 3
    (["compress", "--model", f"{TINY_MODULE}:tiny", "--checkpoint", "plain.pt", "--num-classes", "3",
      "--data", f"{TINY_MODULE}.py", "--out", "o.fxq"], "is not a folder"),
    (["compress", "--model", f"{TINY_MODULE}:tiny", "--checkpoint", "plain.pt", "--num-classes", "3",
      "--data", "images", "--out", "o.fxq", "--mode", "fixed"], "--mode fixed steers only --method paper"),
    (["inspect", "missing.fxq"], "fxquant: error: no file at missing.fxq"),
    (["inspect", "plain.pt"], "not an fxquant file"),
    (["eval", "plain.pt", "--data", "images"], "not an fxquant file"),
])
def test_errors_are_one_line(workspace, capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("fxquant: error: ") and message in err, err
    assert "Traceback" not in err
    assert not (workspace[0] / "o.fxq").exists()


def test_usage_errors_and_debug(workspace, capsys):
    code, out, err = run(capsys, "compress", "--model", "resnet18")
    assert code == 2 and err.count("\n") == 1 and "required" in err
    code, out, err = run(capsys, "compress", "--checkpoint", "plain.pt", "--data", "images", "--out", "o.fxq",
                         "--margin", "-1")
    assert code == 2 and err.count("\n") == 1 and "--margin" in err
    with pytest.raises(CliError, match="no file at missing.fxq"):
        main(["--debug", "inspect", "missing.fxq"])


def test_compress_budget_flags(workspace, capsys):
    common = ("compress", "--model", f"{TINY_MODULE}:tiny", "--checkpoint", "plain.pt", "--num-classes", 3,
              "--data", "images", "--quiet")
    code, out, err = run(capsys, *common, "--out", "b.fxq", "--target-bits", "3", "--report", "b.json")
    assert code == 0, err
    report = json.loads((workspace[0] / "b.json").read_text())
    assert report["average_bits"] <= 3.0 and report["method"] == "sensitivity"
    assert report["settings"]["target_bits"] == 3.0
    code, out, err = run(capsys, *common, "--out", "c.fxq", "--target-bits", "0.5")
    assert code != 0 and "smallest feasible budget is target_bits=1" in err.strip().splitlines()[-1]
    code, out, err = run(capsys, *common, "--out", "d.fxq", "--target-bits", "2", "--max-bytes", "100")
    assert code == 2 and "not allowed with" in err


# ----------------------------------------------------------------------------- fxquant.save(metadata=)


def _tiny_quantized():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    return model, fxquant.quantize(model, 4)


def _rewrite_header(path, change):
    """Edit the JSON header of an .fxq file and recompute its checksum (a crafted file)."""
    raw = path.read_bytes()
    pre = struct.Struct("<8sIQ")
    magic, version, head_len = pre.unpack(raw[:pre.size])
    header = json.loads(raw[pre.size:pre.size + head_len])
    change(header)
    head = json.dumps(header).encode()
    start = pre.pack(magic, version, len(head))
    path.write_bytes(start + head + hashlib.sha256(start + head).digest() + raw[pre.size + head_len + 32:])


def test_save_metadata_round_trip(tmp_path):
    model, q = _tiny_quantized()
    meta = {"model": "pkg.mod:factory", "num_classes": 5, "image_size": [8, 8], "mean": [0.5, 0.5, 0.5],
            "nested": {"ok": True, "none": None}}
    fxquant.save(q, tmp_path / "m.fxq", metadata=meta)
    assert read_header(tmp_path / "m.fxq")["metadata"] == meta
    loaded = fxquant.load(tmp_path / "m.fxq", model)  # load ignores it
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
    fxquant.save(q, tmp_path / "plain.fxq")
    assert read_header(tmp_path / "plain.fxq")["metadata"] is None

    with pytest.raises(ValueError, match="metadata must hold only JSON values"):
        fxquant.save(q, tmp_path / "bad.fxq", metadata={"weights": torch.zeros(2)})
    with pytest.raises(ValueError, match="metadata must be a dict"):
        fxquant.save(q, tmp_path / "bad.fxq", metadata=["not", "a", "dict"])
    assert not (tmp_path / "bad.fxq").exists()

    _rewrite_header(tmp_path / "m.fxq", lambda h: h.__setitem__("metadata", [1, 2]))
    with pytest.raises(FxqFormatError, match="metadata"):
        read_header(tmp_path / "m.fxq")
    _rewrite_header(tmp_path / "plain.fxq", lambda h: h.pop("metadata"))  # files from before the field
    assert "metadata" not in read_header(tmp_path / "plain.fxq")


def test_eval_never_runs_code_named_by_an_untrusted_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    q = fxquant.quantize(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval(), 4)
    marker = tmp_path / "PWNED"
    fxquant.save(q, tmp_path / "evil.fxq", metadata={"model": "os:system", "num_classes": 3,
                                                       "model_kwargs": {"command": f"touch {marker}"}})
    code, out, err = run(capsys, "eval", "evil.fxq", "--data", str(tmp_path))
    assert code == 1 and "does not import code named inside a file" in err
    assert not marker.exists()
