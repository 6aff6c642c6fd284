"""Readers for each on-disk layout: IDX files, NIST's EMNIST zip, CIFAR binary archives, TFDS and
scikit-learn's bundled digits. Each returns validated uint8 NHWC images and int32 labels.

Archives are read in place (zipfile, tarfile streaming); nothing is extracted to disk, and nothing
is decompressed beyond what its header (IDX or tar) allows: see `idx` for the limits.
"""

from __future__ import annotations

import bz2
import functools
import io
import lzma
import os
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, cast

import numpy as np

from synthpart.data import idx
from synthpart.data.catalog import CIFAR10, CIFAR100, ROLES, DatasetSpec, idx_filenames
from synthpart.data.optional import describe, import_error
from synthpart.errors import DataError, ResourceError

# One split: (uint8 [N, H, W, C] images, int32 [N] labels).
Split = tuple[np.ndarray, np.ndarray]
_TFDS_CHUNK = 10_000
# Room in a CIFAR archive for what is not a batch file: tar headers, padding, label names.
_TAR_EXTRA_BYTES = 16 << 20
_BZ2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"


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
  """Reads one EMNIST split from NIST's `gzip.zip` in place, streaming each member.

  Raises:
    DataError: the zip is corrupt, lacks one of the split's members, or a member is larger than
      `idx.max_decompressed()` or than its IDX header declares.
  """
  limit = idx.max_decompressed()
  wanted = emnist_members(spec)
  raw, sources = {}, {}
  try:
    with zipfile.ZipFile(path) as archive:
      names = set(archive.namelist())
      for role, member in wanted.items():
        if member not in names:
          raise DataError(f"{path}: no member {member} (expected NIST's EMNIST gzip.zip)")
        sources[role] = f"{path}:{member}"
        info = archive.getinfo(member)
        if info.file_size > limit:
          raise idx.limit_error(sources[role], f"zip member of {info.file_size} bytes", limit)
        with archive.open(info) as stream:
          raw[role] = idx.read_idx_file(stream, sources[role])
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


def record_bytes(spec: DatasetSpec) -> int:
  """Bytes per CIFAR record: the label byte(s), then the image."""
  h, w, c = spec.image_shape
  return (2 if spec.layout == CIFAR100 else 1) + h * w * c


def batch_records(spec: DatasetSpec) -> dict[str, int]:
  """The most records each batch file (base name) may hold: its split's images over its files.

  CIFAR-10: 10,000 per data_batch_k.bin and in test_batch.bin; CIFAR-100: 50,000 in train.bin,
  10,000 in test.bin.
  """
  counts = {"train": spec.train_count, "test": spec.test_count}
  return {name: counts[split] // len(names)
          for split, names in cifar_members(spec).items() for name in names}


def check_batch_size(size: int, records: int, spec: DatasetSpec, source: str) -> None:
  """Refuses a batch file larger than `records` records, or than the decompression limit."""
  record = record_bytes(spec)
  if size > records * record:
    raise DataError(f"{source}: {size} bytes, more than a {spec.name} batch file holds "
                    f"({records} records of {record} bytes = {records * record} bytes)")
  limit = idx.max_decompressed()
  if size > limit:
    raise idx.limit_error(source, f"batch file of {size} bytes", limit)


def read_batch(stream: io.BufferedIOBase, size: int, source: str) -> np.ndarray:
  """Reads a batch file of `size` bytes (already checked) into uint8 [size], a chunk at a time.

  Raises:
    DataError: the stream ends before `size` bytes.
  """
  data = np.empty(size, np.uint8)
  view, filled = data.data, 0
  while filled < size:
    got = stream.readinto(view[filled:filled + idx.CHUNK])
    if not got:
      raise DataError(f"{source}: ends after {filled} of its {size} bytes")
    filled += got
  return data


def parse_cifar_records(data: bytes | np.ndarray, spec: DatasetSpec, source: str) -> Split:
  """Parses CIFAR fixed-size binary records.

  CIFAR-10 records are 1 label byte + 3072 image bytes; CIFAR-100 records are a coarse label
  byte, a fine label byte, then 3072 image bytes. Images are stored channel-major (CHW).

  Args:
    data: the batch file's bytes (any buffer, e.g. uint8 [size]).

  Returns:
    (uint8 [N, 32, 32, 3] images, int32 [N] labels; the fine labels for CIFAR-100).
  """
  h, w, c = spec.image_shape
  label_bytes = 2 if spec.layout == CIFAR100 else 1
  record = record_bytes(spec)
  size = data.nbytes if isinstance(data, np.ndarray) else len(data)
  if size % record:
    raise DataError(f"{source}: {size} bytes is not a whole number of {record}-byte records")
  rows = np.frombuffer(data, np.uint8).reshape(-1, record)
  labels = labels_from_stored(rows[:, label_bytes - 1], spec, source)
  images = rows[:, label_bytes:].reshape(-1, c, h, w).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def _join(parts: list[Split]) -> Split:
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _tar_chunks(raw: io.BufferedReader, source: str) -> Iterator[bytes]:
  """A tar archive's decompressed bytes in pieces: gzip, bzip2, xz or none, told by content."""
  head = raw.peek(6)[:6]
  if head.startswith((_BZ2_MAGIC, _XZ_MAGIC)):
    opener = bz2.BZ2File if head.startswith(_BZ2_MAGIC) else lzma.LZMAFile
    with opener(raw) as unpacked:
      yield from iter(lambda: unpacked.read(idx.CHUNK), b"")
    return
  yield from idx.decompressed_chunks(raw, source)


def read_cifar_tar(path: Path, spec: DatasetSpec) -> tuple[Split, Split]:
  """Reads CIFAR's official binary archive (`cifar-10-binary.tar.gz`) in place.

  The archive is decompressed as a stream, in order, so it is never rewound or held whole. Each
  batch member must fit the records its file may hold (`batch_records`), checked on its tar
  header before it is read; the whole archive may decompress to those plus 16 MiB for the rest.

  Raises:
    DataError: the archive is corrupt, lacks a batch file, or holds more than it may.
  """
  members = cifar_members(spec)
  records = batch_records(spec)
  limit = min(idx.max_decompressed(),
              sum(records.values()) * record_bytes(spec) + _TAR_EXTRA_BYTES)
  batches: dict[str, Split | DataError] = {}
  try:
    with open(path, "rb") as raw:
      stream = idx.ChunkReader(_tar_chunks(raw, os.fspath(path)),
                               (limit, functools.partial(_archive_too_long, path, spec, limit)))
      # A stream ("r|") is only ever read; the stub wants a seekable, writable file object.
      with tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|",
                        bufsize=idx.CHUNK) as archive:
        for member in archive:
          base = member.name.rsplit("/", 1)[-1]
          if member.isfile() and base in records and base not in batches:
            source = f"{path}:{member.name}"
            check_batch_size(member.size, records[base], spec, source)
            member_stream = archive.extractfile(member)
            if member_stream is None:  # Only for members that are not files: ruled out above.
              raise DataError(f"{path}: corrupt tar archive ({member.name} is not a file)")
            # The stub says IO[bytes]; a member's stream is an io.BufferedReader.
            data = read_batch(cast(io.BufferedIOBase, member_stream), member.size, source)
            try:
              batches[base] = parse_cifar_records(data, spec, source)
            except DataError as e:
              batches[base] = e  # Raised below, after any missing member is named.
      stream.skip(limit)  # To the end, so that gzip checks the whole archive's CRC and size.
  except idx.GzipError as e:
    raise DataError(f"{path}: corrupt tar archive ({e.reason})") from None
  except (tarfile.TarError, zlib.error, lzma.LZMAError, EOFError) as e:
    raise DataError(f"{path}: corrupt tar archive ({e})") from None
  except OSError as e:
    raise DataError(f"{path}: cannot read tar archive ({e.strerror or e})") from None
  missing = sorted(set(records) - set(batches))
  if missing:
    raise DataError(f"{path}: no member {missing[0]} (expected CIFAR's binary archive)")
  parts: dict[str, Split] = {}
  for name in records:
    batch = batches[name]
    if isinstance(batch, DataError):
      raise batch
    parts[name] = batch
  train, test = (_join([parts[name] for name in members[split]]) for split in ("train", "test"))
  return train, test


def _archive_too_long(path: Path, spec: DatasetSpec, limit: int) -> DataError:
  if limit == idx.max_decompressed():
    return idx.limit_error(os.fspath(path), f"the archive decompresses to over {limit} bytes",
                           limit)
  return DataError(f"{path}: the archive decompresses to over {limit} bytes, more than "
                   f"{spec.name}'s batch files and {_TAR_EXTRA_BYTES} bytes besides")


def read_cifar_dir(directory: Path, spec: DatasetSpec) -> tuple[Split, Split]:
  """Reads CIFAR batch files from an already extracted archive directory.

  Raises:
    DataError: a batch file is missing, unreadable, or larger than `batch_records` allows.
  """
  records = batch_records(spec)
  parts: dict[str, Split] = {}
  for name in records:
    path = directory / name
    source = os.fspath(path)
    try:
      with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        check_batch_size(size, records[name], spec, source)
        parts[name] = parse_cifar_records(read_batch(f, size, source), spec, source)
    except OSError as e:
      raise DataError(f"{source}: cannot read ({e.strerror or e})") from None
  members = cifar_members(spec)
  train, test = (_join([parts[name] for name in members[split]]) for split in ("train", "test"))
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
  except (ImportError, OSError, MemoryError) as e:
    raise import_error(e, "sklearn", spec.name, "scikit-learn", (
        f"{spec.name} needs scikit-learn, which bundles it: pip install 'synthpart[demo]' "
        "(or pick another dataset)")) from None
  try:
    bunch = load_digits()
  except MemoryError:
    raise ResourceError(f"{spec.name}: out of memory loading scikit-learn's bundled copy "
                        "(see this process's memory limit: ulimit -v)") from None
  except (OSError, ValueError) as e:
    raise DataError(f"{spec.name}: scikit-learn's bundled copy cannot be read "
                    f"({describe(e)})") from None
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
  except (ImportError, OSError, MemoryError) as e:
    raise import_error(e, "tensorflow_datasets", f"{root}", "tensorflow-datasets", (
        f"{root}: holds a TFDS copy of {spec.tfds_name}, but reading it needs "
        "tensorflow-datasets: pip install 'synthpart[tfds]'")) from None
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
  image_parts: list[np.ndarray] = [np.zeros((0, h, w, c), np.uint8)]
  label_parts: list[np.ndarray] = [np.zeros(0, np.int64)]
  for start in range(0, len(source), _TFDS_CHUNK):
    keys = list(range(start, min(start + _TFDS_CHUNK, len(source))))
    records = getitems(keys) if getitems else [source[i] for i in keys]
    try:
      image_parts.append(np.stack([np.asarray(r["image"], np.uint8).reshape(h, w, c)
                                   for r in records]))
    except ValueError:
      raise DataError(f"{name}: records are not {h}x{w}x{c} images") from None
    label_parts.append(np.asarray([int(r["label"]) for r in records], np.int64))
  images, labels = np.concatenate(image_parts), np.concatenate(label_parts)
  if c == 1:
    # Through the IDX path so that EMNIST is transposed back as from NIST's files.
    images = images_from_idx(images[..., 0], spec, name)
  return pair(images, labels_from_stored(labels, spec, name), name, name)
