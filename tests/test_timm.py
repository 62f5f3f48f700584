"""timm (issue 18 item 10), fast part: tiny timm models of several families, one re-parameterisable
(RepVGG), quantize fully; and ``--model timm:NAME``."""

import json

import numpy as np
import pytest
import torch

import fxquant
from fxquant.cli.main import main
from fxquant.cli.models import CliError, build_model, build_timm_model, check_model_spec
from fxquant.fileformat.saveload import read_header
from fxquant.nn.storage import weight_storage
from tests.timm_helpers import assert_unchanged, build_timm, relative_error, snapshot, typed_weight_elements


@pytest.mark.parametrize("name", ["test_nfnet", "test_vit", "test_efficientnet", "test_convnext", "test_byobnet", "repvgg_a0"])
def test_tiny_timm_models_are_fully_quantized(name):
    model = build_timm(name, in_chans=13)
    x = torch.randn(2, 13, 64, 64)
    before = snapshot(model, x)
    q8 = fxquant.quantize(model, 8)
    rep = fxquant.report(q8)
    assert rep.float_weights == {} and rep.float_fraction == 0.0
    assert weight_storage(q8).packed_params == typed_weight_elements(model)  # every weight, counted apart
    with torch.no_grad():
        ref = model(x)
        assert relative_error(q8(x), ref) < 0.15
        assert relative_error(q8(x), ref) < relative_error(fxquant.quantize(model, 3)(x), ref)
    assert_unchanged(model, x, before)


def test_build_timm_model_and_spec_checks():
    model = build_timm_model("test_resnet", num_classes=4, in_chans=13)
    assert not model.training and model(torch.randn(1, 13, 32, 32)).shape == (1, 4)
    assert build_model("timm:test_resnet", 4, {"in_chans": 2})(torch.randn(1, 2, 32, 32)).shape == (1, 4)
    check_model_spec("timm:test_resnet")
    with pytest.raises(CliError, match="unknown timm model 'test_resnett'.*did you mean test_resnet"):
        check_model_spec("timm:test_resnett")
    with pytest.raises(CliError, match="unknown timm model ''"):
        check_model_spec("timm:")
    with pytest.raises(CliError, match="in-chans"):
        build_timm_model("test_resnet", 4, in_chans=0)
    with pytest.raises(CliError, match="only in_chans"):
        build_model("timm:test_resnet", 4, {"pretrained": True})


@pytest.fixture
def images(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for c, name in enumerate(("a", "b", "c")):
        folder = tmp_path / "images" / name
        folder.mkdir(parents=True)
        for i in range(5):
            pixels = np.clip(rng.normal(60 + 70 * c, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
    return tmp_path


def test_cli_compress_and_eval_a_timm_model(images, capsys):
    model = build_timm("test_resnet", in_chans=3, num_classes=3)
    torch.save(model.state_dict(), images / "float.pt")
    code = main(["-q", "compress", "--model", "timm:test_resnet", "--in-chans", "3", "--num-classes", "3",
                 "--checkpoint", "float.pt", "--data", "images", "--out", "m.fxq", "--method", "paper",
                 "--mode", "fixed", "--margin", "1.0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    meta = read_header(images / "m.fxq")["metadata"]
    assert meta["model"] == "timm:test_resnet" and meta["model_kwargs"] == {"in_chans": 3}
    code = main(["eval", "m.fxq", "--data", "images", "--model", "timm:test_resnet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "top-1" in out
    assert main(["inspect", "m.fxq", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["report"]["float_fraction"] == 0.0


@pytest.mark.parametrize("argv, message", [
    (["--model", "timm:no_such_net"], "unknown timm model 'no_such_net'"),
    (["--model", "resnet18", "--in-chans", "13"], "--in-chans applies to --model timm:NAME only"),
])
def test_cli_timm_errors_are_one_line(images, capsys, argv, message):
    torch.save({"w": torch.zeros(1)}, images / "float.pt")
    code = main(["compress", *argv, "--checkpoint", "float.pt", "--data", "images", "--out", "m.fxq"])
    _, err = capsys.readouterr()
    assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err
