"""Readers for each on-disk layout: IDX files, NIST's EMNIST zip, CIFAR binary archives, TFDS and
scikit-learn's bundled digits. Each returns validated uint8 NHWC images and int32 labels.

Archives are read in place (zipfile, tarfile streaming); nothing is extracted to disk.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from synthpart.data import idx
from synthpart.data.registry import CIFAR10, CIFAR100, ROLES, DatasetSpec, idx_filenames
from synthpart.errors import DataError

# One split: (uint8 [N, H, W, C] images, int32 [N] labels).
Split = tuple[np.ndarray, np.ndarray]
_TFDS_CHUNK = 10_000


def images_from_idx(array: np.ndarray, spec: DatasetSpec, source: str) -> np.ndarray:
  """IDX images uint8 [N, H, W] -> upright uint8 [N, H, W, 1], checked against `spec`.

  EMNIST stores each image transposed, so its rows and columns are swapped back here.
  """
  h, w, _ = spec.image_shape
  if array.dtype != np.uint8 or array.ndim != 3:
    raise DataError(f"{source}: expected uint8 images [N, {h}, {w}] (magic 0x00000803), found "
                    f"{array.dtype} with shape {list(array.shape)}")
  stored = (w, h) if spec.transposed else (h, w)
  if array.shape[1:] != stored:
    raise DataError(f"{source}: expected {stored[0]}x{stored[1]} images for {spec.name}, found "
                    f"{array.shape[1]}x{array.shape[2]}")
  if spec.transposed:
    array = array.transpose(0, 2, 1)
  return np.ascontiguousarray(array)[..., None]


def labels_from_stored(array: np.ndarray, spec: DatasetSpec, source: str) -> np.ndarray:
  """Stored labels (any integer array [N]) -> int32 [N] in 0..num_classes-1.

  Raises:
    DataError: not a vector of integers, or a label outside the dataset's stored range.
  """
  if array.ndim != 1 or array.dtype.kind not in "iu":
    raise DataError(f"{source}: expected integer labels [N] (magic 0x00000801), found "
                    f"{array.dtype} with shape {list(array.shape)}")
  low, high = spec.label_offset, spec.label_offset + spec.num_classes - 1
  if len(array):
    seen_low, seen_high = int(array.min()), int(array.max())
    if seen_low < low or seen_high > high:
      raise DataError(f"{source}: labels span {seen_low}..{seen_high}, but {spec.name} labels "
                      f"must lie in {low}..{high}")
  labels = array.astype(np.int32)
  if spec.label_offset:
    labels -= spec.label_offset
  return labels


def pair(images: np.ndarray, labels: np.ndarray, images_source: str,
         labels_source: str) -> Split:
  """Checks that one split's images and labels have the same count."""
  if len(images) != len(labels):
    raise DataError(f"{labels_source}: {len(labels)} labels but {images_source} holds "
                    f"{len(images)} images")
  return images, labels


def splits_from_idx(raw: Mapping[str, np.ndarray], sources: Mapping[str, str],
                    spec: DatasetSpec) -> tuple[Split, Split]:
  """Raw IDX arrays by role -> ((train images, labels), (test images, labels))."""
  out = []
  for split in ("train", "test"):
    img_role, lab_role = f"{split}_images", f"{split}_labels"
    images = images_from_idx(raw[img_role], spec, sources[img_role])
    labels = labels_from_stored(raw[lab_role], spec, sources[lab_role])
    out.append(pair(images, labels, sources[img_role], sources[lab_role]))
  return out[0], out[1]


def read_idx_files(files: Mapping[str, Path], spec: DatasetSpec) -> tuple[Split, Split]:
  """Reads the four IDX files of a dataset (each gzipped or not)."""
  raw = {role: idx.read_idx(files[role]) for role in ROLES}
  return splits_from_idx(raw, {role: os.fspath(files[role]) for role in ROLES}, spec)


def emnist_members(spec: DatasetSpec) -> dict[str, str]:
  """The member name in NIST's gzip.zip for each role."""
  return {role: f"gzip/{name}.gz" for role, name in idx_filenames(spec).items()}


def read_emnist_zip(path: Path, spec: DatasetSpec) -> tuple[Split, Split]:
  """Reads one EMNIST split from NIST's `gzip.zip` in place.

  Raises:
    DataError: the zip is corrupt or lacks one of the split's members.
  """
  wanted = emnist_members(spec)
  raw, sources = {}, {}
  try:
    with zipfile.ZipFile(path) as archive:
      names = set(archive.namelist())
      for role, member in wanted.items():
        if member not in names:
          raise DataError(f"{path}: no member {member} (expected NIST's EMNIST gzip.zip)")
        sources[role] = f"{path}:{member}"
        raw[role] = idx.read_idx_bytes(archive.read(member), sources[role])
  except (zipfile.BadZipFile, zlib.error, EOFError) as e:
    raise DataError(f"{path}: corrupt zip archive ({e})") from None
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
  return splits_from_idx(raw, sources, spec)


def cifar_members(spec: DatasetSpec) -> dict[str, tuple[str, ...]]:
  """The binary batch files (base names) that make up each split of a CIFAR dataset."""
  if spec.layout == CIFAR10:
    return {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
            "test": ("test_batch.bin",)}
  return {"train": ("train.bin",), "test": ("test.bin",)}


def parse_cifar_records(data: bytes, spec: DatasetSpec, source: str) -> Split:
  """Parses CIFAR fixed-size binary records.

  CIFAR-10 records are 1 label byte + 3072 image bytes; CIFAR-100 records are a coarse label
  byte, a fine label byte, then 3072 image bytes. Images are stored channel-major (CHW).

  Returns:
    (uint8 [N, 32, 32, 3] images, int32 [N] labels; the fine labels for CIFAR-100).
  """
  h, w, c = spec.image_shape
  label_bytes = 2 if spec.layout == CIFAR100 else 1
  record = label_bytes + h * w * c
  if len(data) % record:
    raise DataError(f"{source}: {len(data)} bytes is not a whole number of {record}-byte records")
  rows = np.frombuffer(data, np.uint8).reshape(-1, record)
  labels = labels_from_stored(rows[:, label_bytes - 1], spec, source)
  images = rows[:, label_bytes:].reshape(-1, c, h, w).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def _join(parts: list[Split]) -> Split:
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_cifar_tar(path: Path, spec: DatasetSpec) -> tuple[Split, Split]:
  """Reads CIFAR's official binary archive (`cifar-10-binary.tar.gz`) in place.

  The archive is streamed once, in order, so the gzip stream is never rewound.
  """
  members = cifar_members(spec)
  wanted = {name for names in members.values() for name in names}
  blobs: dict[str, tuple[bytes, str]] = {}
  try:
    with tarfile.open(path, mode="r|*") as archive:
      for member in archive:
        base = member.name.rsplit("/", 1)[-1]
        if member.isfile() and base in wanted and base not in blobs:
          blobs[base] = archive.extractfile(member).read(), f"{path}:{member.name}"
  except (tarfile.TarError, zlib.error, EOFError) as e:
    raise DataError(f"{path}: corrupt tar archive ({e})") from None
  except OSError as e:
    raise DataError(f"{path}: cannot read tar archive ({e.strerror or e})") from None
  missing = sorted(wanted - set(blobs))
  if missing:
    raise DataError(f"{path}: no member {missing[0]} (expected CIFAR's binary archive)")
  train, test = (
      _join([parse_cifar_records(blobs[name][0], spec, blobs[name][1])
             for name in members[split]])
      for split in ("train", "test"))
  return train, test


def read_cifar_dir(directory: Path, spec: DatasetSpec) -> tuple[Split, Split]:
  """Reads CIFAR batch files from an already extracted archive directory."""
  members = cifar_members(spec)
  train, test = (
      _join([parse_cifar_records(idx.read_bytes(directory / name), spec,
                                 os.fspath(directory / name)) for name in members[split]])
      for split in ("train", "test"))
  return train, test


def read_sklearn_digits(spec: DatasetSpec) -> tuple[tuple[Split, Split], str]:
  """scikit-learn's bundled 8x8 digits with a fixed seeded train/test split.

  The 0..16 intensities are scaled to 0..255. The split is a permutation with seed 0: the first
  `spec.test_count` images are the test split, the rest the training split, each in file order.

  Returns:
    ((train, test), a description of the source).
  """
  try:
    import sklearn
    from sklearn.datasets import load_digits
  except ImportError:
    raise DataError(
        f"{spec.name} needs scikit-learn, which bundles it: pip install 'synthpart[demo]' "
        "(or pick another dataset)") from None
  bunch = load_digits()
  images = np.round(np.asarray(bunch.images, np.float64) * (255 / 16)).astype(np.uint8)[..., None]
  labels = np.asarray(bunch.target, np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  test, train = np.sort(order[:spec.test_count]), np.sort(order[spec.test_count:])
  source = f"scikit-learn {sklearn.__version__} load_digits (bundled)"
  return ((images[train], labels[train]), (images[test], labels[test])), source


def read_tfds(root: Path, spec: DatasetSpec) -> tuple[Split, Split]:
  """Reads a TFDS-prepared array_record directory through `tfds.data_source` (no TensorFlow).

  TFDS keeps EMNIST transposed and letters' labels as 1..26, so `spec` maps them as for NIST's
  files.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise DataError(f"{root}: holds a TFDS copy of {spec.tfds_name}, but reading it needs "
                    "tensorflow-datasets: pip install 'synthpart[tfds]'") from None
  try:
    sources = tfds.data_source(spec.tfds_name, data_dir=os.fspath(root), download=False)
  except Exception as e:  # tfds raises many types; all mean the prepared copy is unusable.
    message = " ".join(str(e).split())[:300]
    raise DataError(f"{root}: cannot open TFDS dataset {spec.tfds_name} ({message})") from None
  out = []
  for split in ("train", "test"):
    if split not in sources:
      raise DataError(f"{root}: TFDS dataset {spec.tfds_name} has no {split!r} split")
    out.append(_tfds_split(sources[split], spec, f"{root}:{spec.tfds_name}[{split}]"))
  return out[0], out[1]


def _tfds_split(source, spec: DatasetSpec, name: str) -> Split:
  """Reads every record of one TFDS split into arrays, a chunk of records at a time."""
  h, w, c = spec.image_shape
  getitems = getattr(source, "__getitems__", None)
  images, labels = [np.zeros((0, h, w, c), np.uint8)], [np.zeros(0, np.int64)]
  for start in range(0, len(source), _TFDS_CHUNK):
    keys = list(range(start, min(start + _TFDS_CHUNK, len(source))))
    records = getitems(keys) if getitems else [source[i] for i in keys]
    try:
      images.append(np.stack([np.asarray(r["image"], np.uint8).reshape(h, w, c)
                              for r in records]))
    except ValueError:
      raise DataError(f"{name}: records are not {h}x{w}x{c} images") from None
    labels.append(np.asarray([int(r["label"]) for r in records], np.int64))
  images, labels = np.concatenate(images), np.concatenate(labels)
  if c == 1:
    # Through the IDX path so that EMNIST is transposed back as from NIST's files.
    images = images_from_idx(images[..., 0], spec, name)
  return pair(images, labels_from_stored(labels, spec, name), name, name)
