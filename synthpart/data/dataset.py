"""The in-memory dataset: uint8 images and int32 labels on the host, plus pure helpers on it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from synthpart.errors import DataError


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A labelled image dataset held on the host.

  Attributes:
    name: canonical synthpart name, e.g. "fashion-mnist".
    num_classes: number of classes; labels lie in 0..num_classes-1.
    train_images: uint8 [N, H, W, C], upright, NHWC.
    train_labels: int32 [N].
    test_images: uint8 [M, H, W, C].
    test_labels: int32 [M].
    source: where the data came from, for humans (a directory, archive or URL).
  """
  name: str
  num_classes: int
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  source: str

  def __post_init__(self):
    check_arrays(self.name, self.num_classes, self.train_images, self.train_labels, "train")
    check_arrays(self.name, self.num_classes, self.test_images, self.test_labels, "test")
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise DataError(
          f"{self.name}: train images are {_shape(self.train_images.shape[1:])} but test images "
          f"are {_shape(self.test_images.shape[1:])}")

  @property
  def image_shape(self) -> tuple[int, ...]:
    """(H, W, C) of one image; (H*W*C,) once flattened by `flat()`."""
    return tuple(self.train_images.shape[1:])

  @property
  def num_features(self) -> int:
    """H * W * C, the length of one flattened image."""
    return math.prod(self.image_shape)

  def flat(self) -> Dataset:
    """The same dataset with images as uint8 [N, H*W*C] (views, no copy)."""
    return dataclasses.replace(
        self, train_images=flatten_images(self.train_images),
        test_images=flatten_images(self.test_images))

  def __repr__(self) -> str:
    return (f"Dataset({self.name!r}, classes={self.num_classes}, "
            f"train={_shape(self.train_images.shape)}, test={_shape(self.test_images.shape)}, "
            f"source={self.source!r})")


def _shape(shape: tuple[int, ...]) -> str:
  return "x".join(map(str, shape))


def check_arrays(name: str, num_classes: int, images: np.ndarray, labels: np.ndarray,
                 split: str) -> None:
  """Checks one split's arrays: dtypes, ranks, matching counts and label range.

  Flattened images ([N, F]) pass too, so that `Dataset.flat()` stays a `Dataset`.

  Raises:
    DataError: naming the dataset, split and problem.
  """
  if num_classes < 1:
    raise DataError(f"{name}: num_classes must be positive, got {num_classes}")
  if images.dtype != np.uint8 or images.ndim not in (2, 4):
    raise DataError(f"{name}: {split} images must be uint8 [N, H, W, C], got "
                    f"{images.dtype} {_shape(images.shape)}")
  if labels.dtype != np.int32 or labels.ndim != 1:
    raise DataError(f"{name}: {split} labels must be int32 [N], got "
                    f"{labels.dtype} {_shape(labels.shape)}")
  if len(images) != len(labels):
    raise DataError(f"{name}: {len(images)} {split} images but {len(labels)} labels")
  if len(labels):
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
      raise DataError(f"{name}: {split} labels span {low}..{high}, outside 0..{num_classes - 1}")


def flatten_images(images: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W, C] -> uint8 [N, H*W*C], a view when `images` is contiguous."""
  return images.reshape(len(images), -1)


def read_only(array: np.ndarray) -> np.ndarray:
  """Marks an array read-only: datasets are shared, so nobody may change them in place."""
  array.flags.writeable = False
  return array


def split_validation(ds: Dataset, size: int, seed: int) -> tuple[Dataset, Dataset]:
  """Holds out `size` training images, chosen by a seeded permutation, for validation.

  Both results keep the original order of the images they contain, so the split is a pure
  selection and shuffling stays the trainer's business.

  Args:
    ds: the dataset to split.
    size: number of training images to hold out, 1..N-1.
    seed: non-negative seed of the permutation (numpy's PCG64).

  Returns:
    (fit, val): `fit` trains on the N - size remaining images and keeps the original test split;
    `val` has the same training images and the held-out ones as its test split, so evaluating
    `val`'s test split measures validation accuracy.

  Raises:
    DataError: `size` or `seed` out of range.
  """
  n = len(ds.train_labels)
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= n - 1:
    raise DataError(f"{ds.name}: validation size must be an integer in 1..{n - 1}, got {size!r}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise DataError(f"{ds.name}: validation seed must be a non-negative integer, got {seed!r}")
  order = np.random.default_rng(int(seed)).permutation(n)
  held = np.sort(order[:size])
  kept = np.sort(order[size:])
  train_images, train_labels = read_only(ds.train_images[kept]), read_only(ds.train_labels[kept])
  fit = dataclasses.replace(
      ds, train_images=train_images, train_labels=train_labels,
      source=f"{ds.source} (train minus {size} held out, seed {seed})")
  val = dataclasses.replace(
      ds, train_images=train_images, train_labels=train_labels,
      test_images=read_only(ds.train_images[held]), test_labels=read_only(ds.train_labels[held]),
      source=f"{ds.source} (test = {size} held-out train images, seed {seed})")
  return fit, val
