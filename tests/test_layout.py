"""Faster search forwards: channels-last weights during the search (never after it), the float value
from the hardest-first pass, and accuracy mode's KL and top-1 from one pass; same answers as before."""

import logging

import pytest
import torch
from torch import nn

import fxquant
from fxquant.engine.evaluate import GraphEvaluator
from fxquant.engine.layout import PROBE_IMAGES, use_channels_last
from fxquant.engine.oracle import AccuracyOracle
from fxquant.passes import find_layers, trace
from fxquant.passes.sensitivity import canonical_batches, model_kl, model_kl_and_correct, reference_logprobs
from fxquant.passes.sensitivity_search import Measurement
from tests.models import build, labelled_batches


class ViewsAfterConv(nn.Module):
    """``x.view(n, -1)`` after a convolution: valid only for an NCHW-contiguous activation."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(y.view(y.shape[0], -1))


def _layouts(model: nn.Module) -> list[bool]:
    return [p.is_contiguous() for p in model.parameters()]


def test_channels_last_converts_4d_weights_keeps_outputs_and_undo_restores():
    model, x, _ = build("conv_zoo")
    x = torch.randn(8, *x.shape[1:])
    with torch.no_grad():
        before = model(x)
    weights = {n: p for n, p in model.named_parameters()}
    undo, why = use_channels_last(model, x)
    assert why is None
    convs = [n for n, p in weights.items() if p.dim() == 4]
    assert convs and all(weights[n].is_contiguous(memory_format=torch.channels_last) for n in convs)
    assert all(p is weights[n] for n, p in model.named_parameters())  # the same Parameter objects
    with torch.no_grad():
        assert torch.allclose(model(x), before, rtol=1e-4, atol=1e-5)
    undo()
    assert all(_layouts(model))
    with torch.no_grad():
        assert torch.equal(model(x), before)  # back to the NCHW computation, bit for bit


def test_a_layout_dependent_model_is_left_unchanged_with_the_reason():
    torch.manual_seed(0)
    model = ViewsAfterConv().eval()
    x = torch.randn(6, 3, 8, 8)
    undo, why = use_channels_last(model, x)
    assert why is not None and "probe forward failed" in why and "view" in why
    assert all(_layouts(model))
    undo()  # a no-op
    assert all(_layouts(model))


@pytest.mark.parametrize("name,reason", [("spectral1d", "not a batch of images"),
                                         ("hyperspectral3d", "not a batch of images"),
                                         ("tiny_vit", None)])
def test_channels_last_only_where_it_applies(name, reason):
    model, x, _ = build(name)
    undo, why = use_channels_last(model, x)
    try:
        assert why == reason or (reason and reason in why)
    finally:
        undo()
    assert all(_layouts(model))


def test_a_linear_only_model_has_nothing_to_convert():
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3)).eval()
    _, why = use_channels_last(model, torch.randn(2, 3, 4, 4))
    assert why == "the model has no 4-D weights in NCHW layout"


@pytest.mark.parametrize("options", [dict(), dict(target_bits=3.0), dict(method="paper")])
def test_the_search_leaves_every_weight_in_its_own_layout(options):
    model, batches = labelled_batches("conv_zoo", batch=16, n=64)
    originals = [p.detach().clone() for p in model.parameters()]
    q = fxquant.compress(model, batches, stats_loader=[b[0] for b in batches], verbose=False, **options)
    assert all(_layouts(model)) and all(torch.equal(a, b) for a, b in zip(originals, model.parameters()))
    assert all(p.is_contiguous() for p in q.parameters())
    assert all(b.is_contiguous() for b in q.buffers())


def test_a_layout_dependent_model_still_compresses(caplog):
    torch.manual_seed(0)
    model = ViewsAfterConv().eval()
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    with caplog.at_level(logging.DEBUG, logger="fxquant.search"):
        q = fxquant.compress(model, list(zip(x.split(16), y.split(16))), verbose=False)
    assert "forward passes in the model's own layout: the probe forward failed" in caplog.text
    assert q.meta["fxquant"].method == "sensitivity"


def test_the_hardest_first_pass_scores_the_float_model():
    model, batches = labelled_batches("conv_zoo", batch=16, n=80)
    gm = trace(model)
    oracle = AccuracyOracle(batches)
    evaluator = GraphEvaluator(gm, oracle, find_layers(gm))
    value = evaluator.order_hardest_first()
    assert value == oracle(model) == evaluator.evaluate()[0]
    assert value < 100.0  # every 9th label is wrong: the value is a real count
    assert evaluator.calls == 2
    assert GraphEvaluator(gm, lambda m: 1.0, find_layers(gm)).order_hardest_first() is None  # a user oracle


def test_kl_and_top1_from_one_pass_equal_the_separate_ones():
    model, batches = labelled_batches("conv_zoo", batch=16, n=80)
    oracle = AccuracyOracle(batches)
    xs = canonical_batches([x for x, _ in batches], 0, batch=32)
    ref = reference_logprobs(model, xs)
    torch.manual_seed(3)
    noisy = build("conv_zoo")[0]
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    # Labels in the same content order: match each canonical image to its label.
    every = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    index = {every[i].numpy().tobytes(): i for i in range(len(every))}
    targets = [labels[torch.tensor([index[img.numpy().tobytes()] for img in x])] for x in xs]
    kl, correct = model_kl_and_correct(noisy, xs, ref, targets, oracle)
    assert kl == model_kl(noisy, xs, ref) > 0
    assert oracle.accuracy(correct) == oracle(noisy)
    assert model_kl_and_correct(noisy, xs, ref) == (kl, None)


def test_accuracy_mode_gets_the_same_answer_with_kl_and_top1_from_one_pass(monkeypatch):
    model, batches = labelled_batches("conv_zoo", batch=16, n=96)

    def search():
        return fxquant.compress(model, batches, stats_loader=[b[0] for b in batches], verbose=False,
                                t_init=5.0).meta["fxquant"]

    joint = search()
    monkeypatch.setattr(Measurement, "inputs_are_oracles", property(lambda self: False))
    separate = search()
    assert joint.method == separate.method == "sensitivity"
    assert joint.bits == separate.bits and joint.final_value == separate.final_value
    by_bits = {f.average_bits: f for f in separate.frontier}
    for f in joint.frontier:
        if f.average_bits in by_bits:
            other = by_bits[f.average_bits]
            assert f.value is None or other.value is None or f.value == other.value
            assert f.kl is None or other.kl is None or f.kl == other.kl
    # The complete values of the one-pass run carry their KL, and it ran fewer passes through the evaluator.
    assert sum(f.kl is not None for f in joint.frontier) >= sum(f.kl is not None for f in separate.frontier)
    assert joint.layer_forwards < separate.layer_forwards


def test_probe_uses_only_a_few_images():
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            seen.append(len(x))
            return self.conv(x).mean((2, 3))

    undo, why = use_channels_last(Spy(), torch.randn(50, 3, 4, 4))
    undo()
    assert why is None and seen == [PROBE_IMAGES, PROBE_IMAGES]
