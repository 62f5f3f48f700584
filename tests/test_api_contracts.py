"""The API agrees with itself and fails early (issue 14, item 5).

``quantize(bits_dict, filter_fn=...)`` and ``compress(keep_8bit=..., filter_fn=...)``
treat a layer named for quantization but filtered out the same way; a custom
quantized class that cannot take the call ``rewrite`` makes is refused before the
search runs.
"""

import pytest
import torch
from torch import nn

import fxquant
from tests.models import build


def _calib(example):
    x = torch.randn(16, *example.shape[1:], generator=torch.Generator().manual_seed(1))
    return [(x, torch.zeros(16, dtype=torch.int64))]


def test_quantize_and_compress_refuse_a_filtered_layer_alike():
    model, example, _ = build("spectral1d")
    keep_fc_float = lambda module, name: name != "fc"  # noqa: E731
    with pytest.raises(ValueError, match=r"filter_fn keeps float: \['fc'\]"):
        fxquant.quantize(model, {"c1": 4, "fc": 4}, filter_fn=keep_fc_float)
    with pytest.raises(ValueError, match=r"filter_fn keeps float: \['fc'\]"):
        fxquant.compress(model, _calib(example), keep_8bit=["fc"], filter_fn=keep_fc_float, verbose=False)
    q = fxquant.quantize(model, {"c1": 4, "fc": None}, filter_fn=keep_fc_float)  # None agrees with the filter
    assert {lay.name: lay.bits for lay in fxquant.report(q).layers} == {"c1": 4, "c2": None, "fc": None}


class _NoQweight(nn.Module):
    """A quantized Linear whose from_float predates the ``qweight=`` argument."""

    @classmethod
    def from_float(cls, module, bits, config=None, name=None):
        return fxquant.QuantLinear.from_float(module, bits, config, name)


class _NoFromFloat(nn.Module):
    pass


@pytest.mark.parametrize("qcls, message", [(_NoQweight, "cannot be called as from_float"),
                                           (_NoFromFloat, "has no from_float")])
def test_compress_checks_a_custom_class_before_searching(qcls, message):
    model, example, _ = build("spectral1d")
    calls = []

    def oracle(m):
        calls.append(1)
        return 100.0

    mapping = {**fxquant.DEFAULT_QUANT_MODULE_MAPPING, nn.Linear: qcls}
    with pytest.raises(ValueError, match=f"layer fc: .*{message}"):
        fxquant.compress(model, oracle=oracle, mapping=mapping, verbose=False)
    assert calls == []  # refused before the first oracle call


def test_a_conforming_custom_class_is_accepted():
    model, example, _ = build("spectral1d")

    class MyQuantLinear(fxquant.QuantLinear):
        pass

    mapping = {**fxquant.DEFAULT_QUANT_MODULE_MAPPING, nn.Linear: MyQuantLinear}
    q = fxquant.compress(model, _calib(example), mapping=mapping, method="paper", margin="fixed", t_init=100.0,
                         verbose=False)
    assert type(q.get_submodule("fc")) is MyQuantLinear
