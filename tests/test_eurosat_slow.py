"""End to end on real EuroSAT with a trained checkpoint (slow; run with ``pytest -m slow``)."""

import importlib
import pytest

import fxquant
from fxquant.data.eurosat import eurosat_available, eurosat_splits

pytestmark = [pytest.mark.slow, pytest.mark.eurosat,
              pytest.mark.skipif(not eurosat_available(), reason="EuroSAT not in ../shared/data")]


def test_compress_trained_resnet18_holds_test_accuracy():
    common = importlib.import_module("examples.eurosat.common")
    try:
        model, meta = common.load_trained("resnet18")
    except FileNotFoundError:
        pytest.skip("no ResNet18 checkpoint: run examples/eurosat/train.py --model resnet18")
    splits = eurosat_splits(seed=meta.get("split_seed", 0), calib_size=1000)
    qmodel = fxquant.compress(model, splits.calib_loader(), margin="fixed", verbose=False)
    test = fxquant.AccuracyOracle(splits.test_loader())
    report = fxquant.report(qmodel)
    assert report.average_bits < 5
    assert test(qmodel) >= test(model) - 1.5
