"""The Dataset container, flattening and the validation split."""

import dataclasses

import numpy as np
import pytest

from synthpart.data import DEFAULT_DATASET, Dataset, dataset_names, flatten_images, split_validation
from synthpart.errors import DataError


def _ds(n=20, m=5, classes=4):
  rng = np.random.default_rng(0)
  return Dataset(
      name="toy", num_classes=classes,
      train_images=rng.integers(0, 256, (n, 3, 2, 1), dtype=np.uint8),
      train_labels=(np.arange(n) % classes).astype(np.int32),
      test_images=rng.integers(0, 256, (m, 3, 2, 1), dtype=np.uint8),
      test_labels=(np.arange(m) % classes).astype(np.int32), source="memory")


def test_properties_and_flat():
  ds = _ds()
  assert ds.image_shape == (3, 2, 1) and ds.num_features == 6
  flat = ds.flat()
  assert flat.train_images.shape == (20, 6) and flat.test_images.shape == (5, 6)
  assert flat.image_shape == (6,) and flat.num_features == 6
  assert flat.train_images.dtype == np.uint8
  assert np.shares_memory(flat.train_images, ds.train_images)  # a view, not a copy
  np.testing.assert_array_equal(flat.test_images, flatten_images(ds.test_images))
  np.testing.assert_array_equal(flat.train_images[3], ds.train_images[3].ravel())


@pytest.mark.parametrize("change, message", [
  (dict(train_images=np.zeros((20, 3, 2, 1), np.int64)), "train images must be uint8 or float"),
  (dict(train_images=np.zeros((20, 3, 2, 1), np.float32)),
   "train images are float32 but test images are uint8"),
  (dict(test_labels=np.zeros(5, np.float32)), r"test labels must be integers .* got float32 5"),
  (dict(train_labels=np.zeros(19, np.int32)), "20 train images but 19 labels"),
  (dict(test_labels=np.full(5, 4, np.int32)), r"test labels span 4\.\.4, outside 0\.\.3"),
  (dict(test_images=np.zeros((5, 2, 3, 1), np.uint8)), "train images are 3x2x1 but test"),
  (dict(num_classes=0), r"num_classes must be in 1\.\.2147483647, got 0: it must be at least 1"),
])
def test_inconsistent_arrays_are_rejected(change, message):
  with pytest.raises(DataError, match=message):
    dataclasses.replace(_ds(), **change)


def test_split_validation_is_a_seeded_partition():
  ds = _ds(n=50)
  fit, val = split_validation(ds, 10, seed=3)
  assert len(fit.train_labels) == 40 and len(val.test_labels) == 10
  assert fit.test_images is ds.test_images  # the real test split is untouched
  assert val.train_images is fit.train_images
  # Every training image ends up in exactly one side.
  rows = {tuple(r.ravel()) for r in ds.train_images}
  fit_rows = {tuple(r.ravel()) for r in fit.train_images}
  val_rows = {tuple(r.ravel()) for r in val.test_images}
  assert fit_rows | val_rows == rows and not fit_rows & val_rows
  again, _ = split_validation(ds, 10, seed=3)
  np.testing.assert_array_equal(again.train_images, fit.train_images)
  other, _ = split_validation(ds, 10, seed=4)
  assert not np.array_equal(other.train_images, fit.train_images)
  assert not fit.train_images.flags.writeable and not val.test_labels.flags.writeable


@pytest.mark.parametrize("size", [0, -1, 20, 21, 2.5, True])
def test_split_validation_size_out_of_range(size):
  with pytest.raises(DataError, match=r"toy: validation size must be an integer in 1\.\.19"):
    split_validation(_ds(), size, seed=0)


def test_split_validation_bad_seed():
  with pytest.raises(DataError, match="seed must be a non-negative integer"):
    split_validation(_ds(), 5, seed=-1)


def test_names():
  names = dataset_names()
  assert DEFAULT_DATASET == "digits" and DEFAULT_DATASET in names
  assert {"mnist", "fashion-mnist", "cifar10", "cifar100", "emnist-balanced", "emnist-byclass",
          "emnist-bymerge", "emnist-letters", "emnist-digits", "emnist-mnist"} <= set(names)
