"""The zoo bars on a representative torchvision subset, at small inputs (the full table is benchmarks/zoo.py).

Coverage is the packed weights over the model's own conv/linear/attention weights,
counted from ``named_modules()`` (:func:`benchmarks.zoo.own_layer_weights`), not
from ``find_layers``.
"""

import pytest

from benchmarks import zoo

SUBSET = [
    ("resnet18", 32), ("mobilenet_v3_small", 32), ("efficientnet_b0", 32), ("densenet121", 32),
    ("inception_v3", 80), ("convnext_tiny", 32), ("swin_t", 64), ("vit_b_32", 224),
    ("regnet_x_400mf", 32), ("shufflenet_v2_x0_5", 32), ("squeezenet1_0", 48),
]


@pytest.mark.parametrize("name, size", SUBSET, ids=[n for n, _ in SUBSET])
def test_meets_the_zoo_bars(name, size):
    row = zoo.evaluate(name, size)
    assert row["own_params"] > 0 and row["params"] >= row["own_params"]  # the finder misses none the forward uses
    for bits in zoo.BITS:
        assert row[f"coverage{bits}"] >= 0.99 and row[f"float_left{bits}"] == 0
        assert abs(row[f"bytes_ratio{bits}"] - 1) <= 0.10
        assert row[f"finite{bits}"]
    assert row["err8"] <= 0.1
    assert row["unchanged"]
    assert zoo.passes_bars(row)
