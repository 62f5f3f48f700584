"""Bad inputs to ``quantize``/``compress`` (issue 18 items 7-8): each is a ``ValueError``/``TypeError``
naming the argument (and batch), short, with the caller's model untouched; calibration in eval mode."""

import logging

import pytest
import torch
from torch import nn

import fxquant


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4)).eval()


def _data(n=8):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 8, 8, generator=gen)
    return x, torch.randint(0, 4, (n,), generator=gen)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()]


def _nan_var(model):
    model[1].running_var[0] = float("nan")
    return model


def _meta(model):
    return model.to("meta")


X, Y = _data()
GOOD = [(X[:4], Y[:4]), (X[4:], Y[4:])]
U8 = (X * 40 + 128).clamp(0, 255).to(torch.uint8)

# (what, call(model) -> result, exception type, words the message must hold)
CASES = [
    ("meta q", lambda m: fxquant.quantize(_meta(m), 4), ValueError, ["model", "meta device"]),
    ("meta c", lambda m: fxquant.compress(_meta(m), GOOD, verbose=False), ValueError, ["model", "meta device"]),
    ("channels c", lambda m: fxquant.compress(m, [GOOD[0], (torch.randn(4, 4, 8, 8), Y[4:])], verbose=False),
     ValueError, ["calib_loader batch 1", "channels"]),
    ("channels q", lambda m: fxquant.quantize(m, 4, calib_loader=[X[:4], torch.randn(4, 4, 8, 8)]), ValueError,
     ["calib_loader batch 1", "channels"]),
    ("channels stats", lambda m: fxquant.compress(m, GOOD, stats_loader=[X, torch.randn(2, 5, 8, 8)],
                                                  verbose=False), ValueError, ["stats_loader batch 1"]),
    ("uint8 c", lambda m: fxquant.compress(m, [(U8, Y)], verbose=False), TypeError, ["calib_loader batch 0", "uint8"]),
    ("uint8 q", lambda m: fxquant.quantize(m, 4, calib_loader=[U8]), TypeError, ["calib_loader batch 0", "uint8"]),
    ("float64 c", lambda m: fxquant.compress(m, [(X.double(), Y)], verbose=False), TypeError,
     ["calib_loader batch 0", "float64"]),
    ("float64 q", lambda m: fxquant.quantize(m, 4, calib_loader=[X.double()]), TypeError,
     ["calib_loader batch 0", "float64"]),
    ("tensor c", lambda m: fxquant.compress(m, X, verbose=False), TypeError, ["calib_loader", "single tensor"]),
    ("tensor q", lambda m: fxquant.quantize(m, 4, calib_loader=X), TypeError, ["calib_loader", "single tensor"]),
    ("dict c", lambda m: fxquant.compress({}), TypeError, ["model", "nn.Module", "dict"]),
    ("dict q", lambda m: fxquant.quantize({}, 4), TypeError, ["model", "nn.Module", "dict"]),
    ("nan var c", lambda m: fxquant.compress(_nan_var(m), GOOD, verbose=False), ValueError,
     ["model", "'1.running_var'", "NaN"]),
    ("nan var q", lambda m: fxquant.quantize(_nan_var(m), 4, calib_loader=GOOD), ValueError,
     ["model", "'1.running_var'", "NaN"]),
    ("nan var q plain", lambda m: fxquant.quantize(_nan_var(m), 4), ValueError, ["'1.running_var'"]),
    ("bool labels", lambda m: fxquant.compress(m, [(X, Y > 1)], verbose=False), ValueError,
     ["calib_loader batch 0", "targets", "bool"]),
]


@pytest.mark.parametrize("what, call, error, words", CASES, ids=[c[0] for c in CASES])
def test_bad_inputs_name_the_argument(what, call, error, words):
    model = _model()
    before = _snapshot(model)
    with pytest.raises(error) as info:
        call(model)
    message = str(info.value)
    assert all(w in message for w in words) and len(message) < 400, message
    if "meta" not in what and "nan" not in what and "dict" not in what:  # those tamper with their own copy
        after = _snapshot(model)
        assert before[1] == after[1] and all(torch.equal(before[0][k], after[0][k]) for k in before[0])


def test_inf_buffers_other_than_norm_statistics_are_allowed():
    model = _model()
    model.register_buffer("mask", torch.full((2,), float("-inf")))  # e.g. an attention mask
    q = fxquant.quantize(model, 8)
    assert torch.equal(model.mask, torch.full((2,), float("-inf")))  # the caller's buffer as it was
    x, _ = _data()
    with torch.no_grad():
        out, ref = q(x), model(x)
    assert torch.isfinite(out).all() and torch.allclose(out, ref, atol=0.05 * float(ref.abs().max()))


def test_quantize_calibrates_in_eval_mode_and_keeps_the_callers_mode(caplog):
    model = _model()
    with torch.no_grad():  # non-trivial running statistics, far from any batch's own
        model[1].running_mean.normal_(0, 2)
        model[1].running_var.uniform_(0.5, 4)
    model.train()
    before = _snapshot(model)
    with caplog.at_level(logging.WARNING, logger="fxquant"):
        q = fxquant.quantize(model, 8, calib_loader=GOOD)
    assert "training mode" in caplog.text and "eval mode" in caplog.text
    after = _snapshot(model)
    assert after[1] == before[1] and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert q.training  # the given mode is kept
    bn = dict(q.named_modules())["1"]
    assert torch.equal(bn.running_mean, model[1].running_mean)  # no drift from the calibration batches
    assert torch.equal(bn.running_var, model[1].running_var)
    assert int(bn.num_batches_tracked) == int(model[1].num_batches_tracked)
    # Outputs in eval mode match the same model calibrated in eval mode.
    ref = fxquant.quantize(_model_with(model).eval(), 8, calib_loader=GOOD)
    with torch.no_grad():
        assert torch.equal(q.eval()(X), ref(X))


def _model_with(trained):
    model = _model()
    model.load_state_dict(trained.state_dict())
    return model
