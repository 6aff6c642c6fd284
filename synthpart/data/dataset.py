"""The in-memory dataset: images (uint8 or float32) and int32 labels on the host, plus helpers.

Images are either uint8 pixels, which the trainer scales by 1/255, or float32 values used as they
are; `Dataset.input_scale` says which. `from_arrays` builds a dataset from any arrays a user has.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from synthpart.errors import DataError

# Label values must survive the conversion to int32.
MAX_CLASSES = int(np.iinfo(np.int32).max)

_IMAGE_KINDS = "uint8 or float (float16, float32, float64)"
_LABEL_KINDS = "integers (int8..int64, uint8..uint64)"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A labelled dataset of images or feature vectors held on the host.

  Construction checks and normalises the arrays: float images of any precision are stored as
  float32, integer labels of any width as int32 (after checking they lie in 0..num_classes-1),
  and array-likes such as jax arrays become numpy arrays. Anything else raises `DataError`.

  Attributes:
    name: canonical synthpart name, e.g. "fashion-mnist", "npz:data/mine.npz".
    num_classes: number of classes; labels lie in 0..num_classes-1.
    train_images: [N, H, W, C] upright NHWC images, or [N, F] feature vectors, N >= 1; either
      uint8 (pixels 0..255) or float32 (finite values, used as they are).
    train_labels: int32 [N].
    test_images: [M, H, W, C] or [M, F], M >= 1, the same dtype and per-example shape as
      train_images.
    test_labels: int32 [M].
    source: where the data came from, for humans (a directory, archive, file or URL).

  Preprocessing, done by the trainer on the device: images are flattened to [N, F] and divided by
  `input_scale` (255 for uint8, 1 for float32); with the config's `data.standardize`, each feature
  is then standardised with the mean and standard deviation of the (scaled) training images.
  """
  name: str
  num_classes: int
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  source: str

  def __post_init__(self):
    num_classes = check_num_classes(self.name, self.num_classes)
    object.__setattr__(self, "num_classes", num_classes)
    for split in ("train", "test"):
      images = as_images(getattr(self, f"{split}_images"), f"{self.name}: {split} images")
      labels = as_labels(getattr(self, f"{split}_labels"), f"{self.name}: {split} labels",
                         num_classes)
      if len(images) != len(labels):
        raise DataError(f"{self.name}: {len(images)} {split} images but {len(labels)} labels")
      object.__setattr__(self, f"{split}_images", images)
      object.__setattr__(self, f"{split}_labels", labels)
    if self.train_images.dtype != self.test_images.dtype:
      raise DataError(
          f"{self.name}: train images are {self.train_images.dtype} but test images are "
          f"{self.test_images.dtype}; both splits must be uint8 or both float")
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise DataError(
          f"{self.name}: train images are {_shape(self.train_images.shape[1:])} but test images "
          f"are {_shape(self.test_images.shape[1:])}")

  @property
  def image_shape(self) -> tuple[int, ...]:
    """(H, W, C) of one image; (F,) for feature vectors or once flattened by `flat()`."""
    return tuple(self.train_images.shape[1:])

  @property
  def num_features(self) -> int:
    """H * W * C (or F), the length of one flattened example."""
    return math.prod(self.image_shape)

  @property
  def input_scale(self) -> float:
    """What the trainer divides inputs by: 255.0 for uint8 pixels, 1.0 for float32 values."""
    return 255.0 if self.train_images.dtype == np.uint8 else 1.0

  def flat(self) -> Dataset:
    """The same dataset with images as [N, H*W*C] of the same dtype (views, no copy)."""
    return dataclasses.replace(
        self, train_images=flatten_images(self.train_images),
        test_images=flatten_images(self.test_images))

  def __repr__(self) -> str:
    return (f"Dataset({self.name!r}, classes={self.num_classes}, "
            f"train={_shape(self.train_images.shape)}, test={_shape(self.test_images.shape)}, "
            f"source={self.source!r})")


def _shape(shape: tuple[int, ...]) -> str:
  return "x".join(map(str, shape))


def check_num_classes(name: str, num_classes: Any) -> int:
  """`num_classes` as an int, checked to be in 1..MAX_CLASSES.

  Raises:
    DataError: not an integer, or out of range.
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
    raise DataError(f"{name}: num_classes must be an integer in 1..{MAX_CLASSES}, got "
                    f"{type(num_classes).__name__} {num_classes!r}")
  if not 1 <= num_classes <= MAX_CLASSES:
    why = "at least 1" if num_classes < 1 else f"at most {MAX_CLASSES} (labels are int32)"
    raise DataError(f"{name}: num_classes must be in 1..{MAX_CLASSES}, got {int(num_classes)}: "
                    f"it must be {why}")
  return int(num_classes)


def as_array(value: Any, culprit: str) -> np.ndarray:
  """`value` as a numpy array: numpy arrays as they are; array-likes via `np.asarray`.

  Accepted: numpy arrays, objects with `__array__` (jax arrays, CPU tensors), lists and tuples.

  Raises:
    DataError: naming `culprit`, for anything else, including objects that only look like
      arrays (a `.dtype` and `.shape` but no `__array__`).
  """
  if isinstance(value, np.ndarray):
    return np.asarray(value)
  convertible = isinstance(value, (list, tuple)) or any(
      hasattr(value, attr) for attr in ("__array__", "__array_interface__", "__array_struct__"))
  if not convertible:
    kind = type(value).__name__
    if hasattr(value, "dtype") or hasattr(value, "shape"):
      raise DataError(f"{culprit} is a {kind}, which has .dtype/.shape but no __array__, so it "
                      f"is not an array; pass a numpy array")
    raise DataError(f"{culprit} must be an array (numpy, jax or a list), got {kind}")
  try:
    return np.asarray(value)
  except (TypeError, ValueError) as e:
    message = " ".join(str(e).split())[:200]
    raise DataError(
        f"{culprit} is a {type(value).__name__} that is not an array ({message})") from None


def _is_float(dtype: np.dtype) -> bool:
  return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"


def as_images(value: Any, culprit: str) -> np.ndarray:
  """Checked images: uint8 as they are, float of any precision as float32.

  Args:
    value: [N, H, W, C] images or [N, F] feature vectors, uint8 or float; N >= 1, F >= 1.
    culprit: names the array in messages, e.g. "mine: train images".

  Returns:
    uint8 or float32 [N, H, W, C] or [N, F]; `value` itself when it is already a numpy array of
    that dtype, else a new read-only array.

  Raises:
    DataError: not an array, another dtype, another rank, no examples or features, or
      non-finite float values.
  """
  images = as_array(value, culprit)
  if images.dtype != np.uint8 and not _is_float(images.dtype):
    raise DataError(f"{culprit} must be {_IMAGE_KINDS}, got {images.dtype} "
                    f"{_shape(images.shape)}")
  if images.ndim not in (2, 4):
    raise DataError(f"{culprit} must be [N, H, W, C] images or [N, F] feature vectors, got "
                    f"{images.dtype} {_shape(images.shape) or 'scalar'}")
  if len(images) == 0:
    raise DataError(f"{culprit} has 0 examples; every split needs at least 1")
  if images.size == 0:
    raise DataError(f"{culprit} has 0 features per example ({_shape(images.shape)})")
  if images.dtype == np.uint8:
    return images
  if images.dtype != np.float32:
    with np.errstate(over="ignore"):
      images = read_only(images.astype(np.float32))
  finite = np.isfinite(images)
  if not finite.all():
    bad = finite.size - int(np.count_nonzero(finite))
    raise DataError(f"{culprit} has {bad} non-finite values (NaN, inf, or beyond float32's "
                    f"range); all must be finite")
  return images


def as_labels(value: Any, culprit: str, num_classes: int | None) -> np.ndarray:
  """Checked labels as int32.

  Args:
    value: integer labels [N] of any integer dtype, in 0..num_classes-1; N >= 1.
    culprit: names the array in messages, e.g. "mine: train labels".
    num_classes: the number of classes; None checks only that the labels fit int32.

  Returns:
    int32 [N]; `value` itself when it is already an int32 numpy array, else a new read-only
    array.

  Raises:
    DataError: not an array, not integers (bool, float and object labels are refused), not 1-D,
      empty, or out of range.
  """
  labels = as_array(value, culprit)
  if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
    raise DataError(f"{culprit} must be {_LABEL_KINDS} [N], got {labels.dtype} "
                    f"{_shape(labels.shape) or 'scalar'}")
  if len(labels) == 0:
    raise DataError(f"{culprit} has 0 examples; every split needs at least 1")
  low, high = int(labels.min()), int(labels.max())
  limit = MAX_CLASSES if num_classes is None else num_classes
  if low < 0 or high >= limit:
    why = "int32" if num_classes is None else f"num_classes={num_classes}"
    raise DataError(f"{culprit} span {low}..{high}, outside 0..{limit - 1} ({why})")
  if labels.dtype == np.int32:
    return labels
  return read_only(labels.astype(np.int32))


def flatten_images(images: np.ndarray) -> np.ndarray:
  """[N, H, W, C] -> [N, H*W*C] of the same dtype, a view when `images` is contiguous."""
  return images.reshape(len(images), -1)


def read_only(array: np.ndarray) -> np.ndarray:
  """Marks an array read-only: datasets are shared, so nobody may change them in place."""
  array.flags.writeable = False
  return array


def read_only_view(array: np.ndarray) -> np.ndarray:
  """A read-only view of `array`, leaving `array` itself (the caller's) writable as it was."""
  return read_only(array.view())


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


def from_arrays(name: str, x_train: Any, y_train: Any, x_test: Any, y_test: Any, *,
                num_classes: int | None = None, source: str = "arrays") -> Dataset:
  """A `Dataset` from a user's own arrays.

      ds = from_arrays("mine", x_train, y_train, x_test, y_test)   # num_classes = max label + 1

  Args:
    name: the dataset's name, as results report it.
    x_train: [N, H, W, C] images, [N, H, W] single-channel images (given a channel axis of 1) or
      [N, F] feature vectors; uint8 pixels (scaled by 1/255 for training) or float16/32/64 values
      (stored as float32, used as they are). Numpy arrays, jax arrays, or anything else with
      `__array__`, or lists.
    y_train: [N] integer labels of any integer dtype (stored as int32) in 0..num_classes-1.
    x_test: [M, ...] like x_train: the same dtype kind and per-example shape.
    y_test: [M] integer labels like y_train.
    num_classes: the number of classes; by default the largest label in either split plus one.
    source: where the arrays came from, for humans.

  Returns:
    The dataset, its arrays read-only (views of the given arrays where no conversion was needed,
    so the caller's own arrays stay writable).

  Raises:
    DataError: naming the array (x_train, y_train, x_test, y_test) and what is allowed.
  """
  if not isinstance(name, str) or not name.strip():
    raise DataError(f"dataset name must be a non-empty string, got {name!r}")
  images = {key: as_images(_add_channel(as_array(value, f"{name}: {key}")), f"{name}: {key}")
            for key, value in (("x_train", x_train), ("x_test", x_test))}
  labels = {key: as_labels(value, f"{name}: {key}", None)
            for key, value in (("y_train", y_train), ("y_test", y_test))}
  if num_classes is None:
    num_classes = max(int(y.max()) for y in labels.values()) + 1
  num_classes = check_num_classes(name, num_classes)
  for key, y in labels.items():
    as_labels(y, f"{name}: {key}", num_classes)
  for split in ("train", "test"):
    x, y = images[f"x_{split}"], labels[f"y_{split}"]
    if len(x) != len(y):
      raise DataError(f"{name}: x_{split} has {len(x)} examples but y_{split} has {len(y)}")
  return Dataset(
      name=name, num_classes=num_classes,
      train_images=read_only_view(images["x_train"]),
      train_labels=read_only_view(labels["y_train"]),
      test_images=read_only_view(images["x_test"]),
      test_labels=read_only_view(labels["y_test"]), source=source)


def _add_channel(images: np.ndarray) -> np.ndarray:
  """[N, H, W] -> [N, H, W, 1]; other shapes as they are."""
  return images[..., np.newaxis] if images.ndim == 3 else images
