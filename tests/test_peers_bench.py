"""benchmarks/peers.py machinery on a tiny CNN: every tool row builds, saves and counts, or says why not."""

import pytest
import torch
from torch import nn

import fxquant

from benchmarks import peers
from benchmarks.latency import interleaved_latency
from benchmarks.peer_tools import TOOLS, Built, Unavailable, ao_fx_static_int8, float_layers


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def _calib():
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 64, 64, generator=gen), torch.randint(0, 10, (4,), generator=gen)) for _ in range(2)]


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t.key)
def test_each_tool_builds_saves_and_counts_or_says_why_not(tool, tmp_path):
    model = _tiny()
    example = torch.randn(2, 3, 64, 64)
    try:
        built = tool.build(model, _calib(), example)
    except Unavailable as e:
        assert str(e)  # the row will quote the reason
        pytest.skip(f"{tool.key} is unavailable here, nothing tested: {e}")
    assert isinstance(built, Built) and built.seconds >= 0
    path = tool.save(built.model, tmp_path / tool.key)
    assert path.exists() and path.stat().st_size > 0
    quantized = tool.quantized(built.model)
    assert set(quantized) <= {n for n, _ in built.model.named_modules()}
    with torch.inference_mode():
        assert built.model(example).shape == (2, 10)
    if tool.key.startswith("fxquant"):
        assert len(quantized) == len(float_layers(model)) == 3
    if tool.key == "fxquant-2bit":  # budget mode, as the row's label says
        assert fxquant.report(built.model).average_bits <= 2.0
    if tool.key == "ao-dynamic-int8":
        assert quantized == ["6"]  # only the nn.Linear
    for name, param in model.named_parameters():  # the caller's model is never modified
        assert type(param) is nn.Parameter, name


def test_interleaved_latency_reports_every_model_against_the_reference():
    models = {"a": _tiny(), "b": _tiny()}
    lat = interleaved_latency(models, "a", batch=2, rounds=2, min_seconds=0.0)
    assert set(lat) == {"a", "b"} and lat["a"].ratio == 1.0
    assert all(v.ms > 0 and v.ratio > 0 for v in lat.values())
    with pytest.raises(ValueError, match="reference"):
        interleaved_latency(models, "c", batch=1)
    with pytest.raises(ValueError, match="rounds"):
        interleaved_latency(models, "a", batch=1, rounds=0)


def _args(**kw):
    return type("Args", (), {"model": "resnet18", "calib_size": 256, "threads": 1, "rounds": 3, "eval_batch": 256,
                           **kw})()


def test_table_and_doc_block(tmp_path):
    rows = [
        {"key": "float32", "label": "float32", "storage": "float32 weights", "status": "ok", "note": "",
         "accuracy": 96.6, "quantized": "0/21", "file_bytes": 44_000_000, "saved_as": ".pt", "seconds": 0.0,
         "ms_b1": 13.0, "ratio_b1": 1.0, "ms_b64": 130.0, "ratio_b64": 1.0},
        {"key": "fxquant-4", "label": "fxquant fixed 4 bits", "storage": "packed only", "status": "ok",
         "note": "", "accuracy": 86.7, "quantized": "21/21", "file_bytes": 5_500_000, "saved_as": ".fxq",
         "seconds": 0.2, "ms_b1": 16.0, "ratio_b1": 1.23, "ms_b64": 137.0, "ratio_b64": 1.05},
        {"key": "torchao-int4-wo", "label": "torchao int4", "storage": "int4", "status": "unavailable",
         "note": "ImportError: Requires mslk"},
    ]
    info = {"cpu": "CPU", "cores": 2, "torch": "2.x", "torchao": "0.x", "fxquant": "0.1", "python": "3.11",
            "date": "today"}
    text = peers.table(rows, info, _args(), "python benchmarks/peers.py", 5400)
    assert "| fxquant fixed 4 bits | 86.70% | 21/21 | 5.25 MiB (12%), fxquant.save | 1.23 | 1.05 | 0.2 s |" in text
    assert "| float32 | 96.60% | – | 41.96 MiB, torch.save(state_dict) | 1.00 (13.0 ms) | 1.00 (130.0 ms) |" in text
    assert "unavailable [1]" in text and "[1] torchao int4: unavailable: ImportError: Requires mslk" in text
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# B\n<!-- peers:resnet18:begin -->\nplaceholder\n<!-- peers:resnet18:end -->\nafter\n")
    peers.update_doc(doc, "resnet18", text)
    new = doc.read_text()
    assert "placeholder" not in new and text in new and new.endswith("<!-- peers:resnet18:end -->\nafter\n")
    with pytest.raises(SystemExit, match="resnet50"):
        peers.update_doc(doc, "resnet50", text)


def test_quick_mode_refuses_to_write_the_doc(capsys):
    with pytest.raises(SystemExit):
        peers.main(["--quick", "--update-doc", "docs/benchmarks.md"])
    assert "--quick" in capsys.readouterr().err


def test_static_int8_leaves_the_named_part_float():
    model = _tiny()
    try:
        q = ao_fx_static_int8(model, _calib(), torch.randn(2, 3, 64, 64), "x86", "6")
    except RuntimeError as e:  # a torch build without the x86 quantized engine
        pytest.skip(f"no x86 quantized engine: {e}")
    assert type(q.get_submodule("6")) is nn.Linear  # the part asked for stays float
    assert "Quantized" in type(q.get_submodule("0")).__name__ or "quantized" in type(q.get_submodule("0")).__module__
    # top1 counts right answers over all batches: a model always saying class 0, on labels 0,0,1 / 0
    always_zero = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        always_zero[1].weight.zero_()
        always_zero[1].bias.copy_(torch.tensor([1.0, 0.0]))
    batches = [(torch.zeros(3, 1), torch.tensor([0, 0, 1])), (torch.zeros(1, 1), torch.tensor([0]))]
    assert peers.accuracy(always_zero, batches) == 75.0
    for name, param in model.named_parameters():
        assert type(param) is nn.Parameter, name
