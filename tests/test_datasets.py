"""EuroSAT loading and the seeded stratified split (skipped when ../shared/data is absent)."""

import pytest
import torch

from fxquant.data.eurosat import (TensorBatches, calibration_indices, eurosat_available, eurosat_splits,
                              stratified_split)


def test_split_is_stratified_disjoint_and_seeded():
    labels = torch.arange(10).repeat_interleave(torch.tensor([30, 30, 30, 25, 25, 20, 25, 30, 25, 30]))
    train, test = stratified_split(labels, 0.2, seed=0)
    assert len(set(train.tolist()) & set(test.tolist())) == 0
    assert len(train) + len(test) == len(labels)
    for c in range(10):
        n = int((labels == c).sum())
        assert int((labels[test] == c).sum()) == pytest.approx(0.2 * n, abs=1)
    again = stratified_split(labels, 0.2, seed=0)
    assert torch.equal(again[0], train) and torch.equal(again[1], test)
    assert not torch.equal(stratified_split(labels, 0.2, seed=1)[1], test)
    calib = calibration_indices(labels, train, size=50, seed=0)
    assert len(calib) == 50 and set(calib.tolist()) <= set(train.tolist())


def test_tensor_batches_are_reiterable():
    images = torch.randint(0, 255, (10, 3, 4, 4), dtype=torch.uint8)
    labels = torch.arange(10)
    batches = TensorBatches(images, labels, torch.arange(10), batch_size=4)
    first, second = list(batches), list(batches)
    assert len(batches) == 3 and [y.tolist() for _, y in first] == [y.tolist() for _, y in second]
    assert first[0][0].dtype == torch.float32


@pytest.mark.eurosat
@pytest.mark.skipif(not eurosat_available(), reason="EuroSAT not in ../shared/data")
def test_real_eurosat_split_keeps_test_out_of_calibration():
    splits = eurosat_splits(calib_size=2000)
    assert splits.arrays.images.shape == (27000, 3, 64, 64)
    assert len(splits.train_idx) == 21600 and len(splits.test_idx) == 5400
    assert len(splits.calib_idx) == 2000
    assert not set(splits.calib_idx.tolist()) & set(splits.test_idx.tolist())
    x, y = next(iter(splits.calib_loader(batch_size=16)))
    assert x.shape == (16, 3, 64, 64) and y.dtype == torch.int64
