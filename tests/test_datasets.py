"""EuroSAT loading and the seeded stratified split (skipped when ../shared/data is absent)."""

import os

import pytest
import torch

from fxquant.data.batches import EUROSAT_MEAN, EUROSAT_STD, normalize
from fxquant.data.eurosat import eurosat_root, load_eurosat

from fxquant.data.eurosat import (ImageBatches, calibration_indices, eurosat_available, eurosat_splits,
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


def test_image_batches_are_reiterable():
    images = torch.randint(0, 255, (10, 3, 4, 4), dtype=torch.uint8)
    labels = torch.arange(10)
    batches = ImageBatches(images, labels, torch.arange(10), batch_size=4)
    first, second = list(batches), list(batches)
    assert len(batches) == 3 and [y.tolist() for _, y in first] == [y.tolist() for _, y in second]
    assert first[0][0].dtype == torch.float32


def test_image_batches_standardise_float_and_uint8_images():
    floats = torch.rand(6, 13, 5, 5)
    labels = torch.arange(6)
    mean, std = [0.5] * 13, [0.25] * 13
    (x, y), = list(ImageBatches(floats, labels, mean=mean, std=std, batch_size=8))
    assert torch.allclose(x, (floats - 0.5) / 0.25) and torch.equal(y, labels)
    (x, _), = list(ImageBatches(floats, labels, mean=mean, std=std, size=(3, 3), batch_size=8))
    assert x.shape == (6, 13, 3, 3)
    rgb = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    (x, _), = list(ImageBatches(rgb, labels, batch_size=8))
    mean3, std3 = torch.tensor(EUROSAT_MEAN).view(1, 3, 1, 1), torch.tensor(EUROSAT_STD).view(1, 3, 1, 1)
    by_hand = (rgb.float() / 255 - mean3) / std3
    assert torch.equal(x, normalize(rgb)) and torch.allclose(x, by_hand, atol=1e-5)  # uint8 RGB: EuroSAT's defaults
    (x, _), = list(ImageBatches(rgb, labels, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), batch_size=8))
    assert torch.allclose(x, (rgb.float() / 255 - 0.5) / 0.2, atol=1e-5)
    (x, _), = list(ImageBatches(rgb, labels, mean=EUROSAT_MEAN, std=EUROSAT_STD, batch_size=8))
    assert torch.allclose(x, by_hand, atol=1e-5)
    with pytest.raises(ValueError, match="need 'mean' and 'std'"):
        ImageBatches(floats, labels)
    with pytest.raises(ValueError, match="'mean' has 3 values for images of 13 channels"):
        ImageBatches(floats, labels, mean=(0.0,) * 3, std=(1.0,) * 3)


def test_shuffled_passes_differ_but_repeat_with_the_seed():
    images, labels = torch.rand(20, 1, 2, 2), torch.arange(20)
    a = ImageBatches(images, labels, mean=[0.0], std=[1.0], batch_size=20, shuffle=True, seed=3)
    b = ImageBatches(images, labels, mean=[0.0], std=[1.0], batch_size=20, shuffle=True, seed=3)
    first, second = next(iter(a))[1], next(iter(a))[1]
    assert not torch.equal(first, second)
    assert torch.equal(first, next(iter(b))[1])


def test_eurosat_root_from_argument_environment_or_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("FXQUANT_EUROSAT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert eurosat_root() == (tmp_path / ".." / "shared" / "data").resolve()
    monkeypatch.setenv("FXQUANT_EUROSAT_ROOT", str(tmp_path / "env"))
    assert eurosat_root() == tmp_path / "env"
    assert eurosat_root(tmp_path / "arg") == tmp_path / "arg"
    with pytest.raises(FileNotFoundError) as info:
        load_eurosat(None, use_cache=False)
    message = str(info.value)
    assert "'root' argument" in message and "FXQUANT_EUROSAT_ROOT" in message and "../shared/data" in message


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
