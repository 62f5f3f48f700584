"""timm architectures (issue 18 item 10), slow: a representative set built with ``in_chans=13``.

For each: every conv/linear/attention weight is packed (counted by module type
on the float model, not by the layer finder) or reported float; the traced
float graph (with folded weights) computes what the model computes; packed
bytes match ``sum(params * bits / 8)``; 8-bit outputs stay close; the caller's
model and its classes are unchanged. Run with ``pytest -m slow tests/test_timm_slow.py``
(about two minutes on one core: 17 models, 17 passed with timm 1.0.31); ``FXQUANT_TIMM_MODELS=a,b`` restricts the set.
"""

import os

import pytest
import torch

import fxquant
from fxquant import passes
from fxquant.nn.storage import weight_storage
from tests.timm_helpers import assert_unchanged, build_timm, relative_error, snapshot, typed_weight_elements

# name -> input size (None: the model's own img_size default is kept and the input uses it).
FAMILIES = {
    # CNNs
    "resnet18": 64, "efficientnet_b0": 64, "mobilenetv3_small_050": 64, "convnext_atto": 64,
    # mobile hybrids
    "mobilevit_xxs": 64, "efficientformer_l1": None, "efficientformerv2_s0": 64,
    # transformers
    "vit_tiny_patch16_224": 64, "deit_tiny_patch16_224": 64, "swin_tiny_patch4_window7_224": None,
    "maxvit_pico_rw_256": 64, "coatnet_nano_rw_224": 64,
    # MLP-mixer
    "mixer_s32_224": 64,
    # normaliser-free (weight-standardised convs)
    "nf_resnet26": 64, "nf_regnet_b0": 64,
    # re-parameterisable
    "repvgg_a0": 64, "mobileone_s0": 64,
}
_SIZED = ("vit", "deit", "swin", "mixer", "maxvit", "coatnet", "efficientformerv2")  # take img_size=
_SELECTED = [n for n in os.environ.get("FXQUANT_TIMM_MODELS", "").split(",") if n] or sorted(FAMILIES)


@pytest.mark.slow
@pytest.mark.parametrize("name", _SELECTED)
def test_timm_architecture(name):
    size = FAMILIES.get(name, 64)
    model = build_timm(name, in_chans=13, img_size=size if size and name.startswith(_SIZED) else None)
    side = size or model.pretrained_cfg["input_size"][-1]
    x = torch.randn(2, 13, side, side, generator=torch.Generator().manual_seed(1))
    before = snapshot(model, x)
    with torch.no_grad():
        ref = model(x)
        traced = passes.trace(model)
        assert relative_error(traced(x), ref) < 1e-4  # tracing and folding change nothing

    q8 = fxquant.quantize(model, 8)
    rep = fxquant.report(q8)
    total = typed_weight_elements(model)
    packed = weight_storage(q8).packed_params
    assert rep.float_weights == {}, f"left float: {rep.float_weights}"
    assert packed >= total  # every typed weight packed; bare Parameters fed to a matmul add to it
    with torch.no_grad():
        err8 = relative_error(q8(x), ref)
    assert err8 < 0.15

    q4 = fxquant.quantize(model, 4)
    storage = weight_storage(q4)
    ideal = storage.packed_params * 4 / 8
    assert ideal <= storage.packed_bytes <= 1.05 * ideal + 64 * len(rep.layers)
    with torch.no_grad():
        assert relative_error(q4(x), ref) > err8
    assert_unchanged(model, x, before)
