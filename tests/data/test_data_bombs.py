"""Decompression bombs: files that inflate far past what their headers allow are refused.

Each bomb (a gzipped IDX file, NIST's zip layout, a CIFAR tar) holds 1 GiB of zeros in about
1 MB. It is read in a fresh Python process, whose peak resident memory must grow by less than
`MAX_GROWTH` while it refuses the file with a one-line `DataError`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest

from synthpart.data import formats, idx, load_dataset
from synthpart.data.catalog import get_spec, idx_filenames
from synthpart.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30
MAX_GROWTH = 100 << 20
# A header for 10 images of 28x28: 7,840 bytes of payload.
IMAGES_HEAD = struct.pack(">IIII", idx.IMAGES_MAGIC, 10, 28, 28)
_BLOCK = 16 << 20


def write_gzip_zeros(out: BinaryIO, head: bytes, zeros: int) -> None:
  """Writes one gzip member holding `head` then `zeros` zero bytes, never holding them all.

  After a full flush deflate starts afresh, so every 16 MiB block of zeros compresses to the
  same bytes: one block is compressed and written again and again (about 1 MB per GiB).
  """
  comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
  out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # gzip header, mtime 0
  out.write(comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH))
  crc = zlib.crc32(head)
  block = bytes(_BLOCK)
  whole, rest = divmod(zeros, _BLOCK)
  piece = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH) if whole else b""
  for _ in range(whole):
    out.write(piece)
    crc = zlib.crc32(block, crc)
  out.write(comp.compress(bytes(rest)) + comp.flush())
  crc = zlib.crc32(bytes(rest), crc)
  out.write(struct.pack("<II", crc, (len(head) + zeros) & 0xFFFFFFFF))


def gzip_bomb(path: Path, zeros: int = GIB, head: bytes = IMAGES_HEAD) -> Path:
  """An IDX .gz file: `head` (by default 10x28x28 images), then `zeros` zero bytes."""
  with open(path, "wb") as f:
    write_gzip_zeros(f, head, zeros)
  return path


def zip_bomb(path: Path, gz_bomb: bytes) -> Path:
  """NIST's gzip.zip layout for emnist-balanced; its training images member is `gz_bomb`."""
  members = {"train_images": gz_bomb,
             "train_labels": gzip.compress(idx.idx_bytes(np.zeros(10, np.uint8))),
             "test_images": gzip.compress(idx.idx_bytes(np.zeros((10, 28, 28), np.uint8))),
             "test_labels": gzip.compress(idx.idx_bytes(np.zeros(10, np.uint8)))}
  with zipfile.ZipFile(path, "w") as archive:
    for role, name in idx_filenames(get_spec("emnist-balanced")).items():
      archive.writestr(f"gzip/{name}.gz", members[role])
  return path


def tar_bomb(path: Path, zeros: int = GIB,
             member: str = "cifar-10-batches-bin/data_batch_1.bin") -> Path:
  """A cifar-10-binary.tar.gz whose one `member` declares and holds `zeros` zero bytes."""
  info = tarfile.TarInfo(member)
  info.size = zeros
  # The data, its padding to 512 bytes and the two end-of-archive blocks are all zeros.
  with open(path, "wb") as f:
    write_gzip_zeros(f, info.tobuf(tarfile.GNU_FORMAT), zeros + -zeros % 512 + 1024)
  return path


_CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from synthpart.data import catalog, formats, idx
from synthpart.errors import DataError
path, kind = Path(sys.argv[2]), sys.argv[3]
read = {
  "idx": lambda: idx.read_idx(path),
  "zip": lambda: formats.read_emnist_zip(path, catalog.get_spec("emnist-balanced")),
  "tar": lambda: formats.read_cifar_tar(path, catalog.get_spec("cifar10")),
  "dir": lambda: formats.read_cifar_dir(path, catalog.get_spec("cifar10")),
}[kind]
def peak():
  # VmHWM belongs to this program's own memory map; ru_maxrss starts from the forked copy of
  # the parent, so it reports at least the parent's size.
  try:
    with open("/proc/self/status") as f:
      return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
  except (OSError, StopIteration):
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if len(sys.argv) > 4:  # An address-space cap, so a reader gone wrong fails instead of swapping.
  pages = int(open("/proc/self/statm").read().split()[0])
  cap = pages * resource.getpagesize() + int(sys.argv[4])
  resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:  # Resets VmHWM to the current resident set (Linux 4.0 and later).
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
except OSError:
  pass
before, start = peak(), time.perf_counter()
try:
  read()
  error = None
except DataError as e:
  error = str(e)
seconds = time.perf_counter() - start
print(json.dumps({"growth": peak() - before, "peak": peak(), "seconds": seconds, "error": error}))
"""


def measure(kind: str, path: Path, *, root: Path = ROOT, headroom: int | None = 2 * GIB,
            env: dict[str, str] | None = None) -> dict:
  """Reads `path` in a fresh Python with synthpart from `root`.

  Args:
    kind: "idx" (read_idx), "zip" (read_emnist_zip), "tar" (read_cifar_tar) or "dir"
      (read_cifar_dir, `path` a directory).
    headroom: address space the reader may add (Linux), or None for no cap.
    env: variables added to the environment.

  Returns:
    {"growth": growth of the peak resident set while reading, "peak": the process's peak
    resident set (both in bytes), "seconds": the read's wall time, "error": the DataError's
    message or None}.
  """
  args = [sys.executable, "-c", _CHILD, os.fspath(root), os.fspath(path), kind]
  if headroom is not None and os.path.exists("/proc/self/statm"):
    args.append(str(headroom))
  result = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **(env or {})})
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


def peak_growth(kind: str, path: Path) -> tuple[int, str | None]:
  """(growth of the peak resident set in bytes, the DataError's message or None): `measure`."""
  report = measure(kind, path)
  return report["growth"], report["error"]


@pytest.fixture(scope="module")
def gz_bomb(tmp_path_factory) -> Path:
  """train-images-idx3-ubyte.gz: a header for 10 images, then 1 GiB of zeros (about 1 MB)."""
  return gzip_bomb(tmp_path_factory.mktemp("bomb") / "train-images-idx3-ubyte.gz")


def test_bomb_writer_makes_valid_gzip(tmp_path, gz_bomb):
  path = gzip_bomb(tmp_path / "b.gz", zeros=_BLOCK + 5, head=b"head")
  data = gzip.decompress(path.read_bytes())
  assert data[:4] == b"head" and len(data) == 4 + _BLOCK + 5 and not data[4:].strip(b"\0")
  assert gz_bomb.stat().st_size < 2_000_000


def test_gzip_bomb_is_refused_in_bounded_memory(gz_bomb):
  growth, error = peak_growth("idx", gz_bomb)
  assert error.startswith(f"{gz_bomb}: IDX data has trailing bytes: header says 10x28x28 uint8 = "
                          "7840 bytes, file holds at least ")
  assert "\n" not in error
  assert growth < MAX_GROWTH


def test_zip_bomb_is_refused_in_bounded_memory(tmp_path, gz_bomb):
  growth, error = peak_growth("zip", zip_bomb(tmp_path / "gzip.zip", gz_bomb.read_bytes()))
  assert error.startswith(f"{tmp_path}/gzip.zip:gzip/emnist-balanced-train-images-idx3-ubyte.gz: "
                          "IDX data has trailing bytes: header says 10x28x28 uint8")
  assert "\n" not in error
  assert growth < MAX_GROWTH


def test_tar_bomb_is_refused_on_its_header(tmp_path):
  growth, error = peak_growth("tar", tar_bomb(tmp_path / "cifar-10-binary.tar.gz"))
  assert error == (f"{tmp_path}/cifar-10-binary.tar.gz:cifar-10-batches-bin/data_batch_1.bin: "
                   f"{GIB} bytes, more than a cifar10 batch file holds (10000 records of 3073 "
                   "bytes = 30730000 bytes)")
  assert growth < MAX_GROWTH


def test_tar_bomb_in_another_member_stops_at_the_archive_limit(tmp_path):
  """A huge member that is no batch file is skipped, but only up to the archive's limit."""
  path = tar_bomb(tmp_path / "cifar-10-binary.tar.gz",
                  member="cifar-10-batches-bin/readme.html")
  growth, error = peak_growth("tar", path)
  limit = 6 * 30_730_000 + (16 << 20)
  assert error == (f"{path}: the archive decompresses to over {limit} bytes, more than cifar10's "
                   f"batch files and {16 << 20} bytes besides")
  assert growth < MAX_GROWTH


def test_uncompressed_bombs_are_refused_before_reading(tmp_path):
  """Sparse files: 1 GiB on paper, nothing on disk."""
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(IMAGES_HEAD)
  os.truncate(path, GIB)
  growth, error = peak_growth("idx", path)
  assert "IDX data has trailing bytes" in error and growth < MAX_GROWTH
  batches = tmp_path / "cifar-10-batches-bin"
  batches.mkdir()
  (batches / "data_batch_1.bin").touch()
  os.truncate(batches / "data_batch_1.bin", GIB)
  growth, error = peak_growth("dir", batches)
  assert error == (f"{batches}/data_batch_1.bin: {GIB} bytes, more than a cifar10 batch file "
                   "holds (10000 records of 3073 bytes = 30730000 bytes)")
  assert growth < MAX_GROWTH


def test_header_over_the_limit_is_refused_before_its_payload(tmp_path):
  """The header declares 64 GiB; nothing after it is read (it holds only 100 bytes)."""
  head = struct.pack(">IIII", idx.IMAGES_MAGIC, 2**26, 32, 32)
  path = tmp_path / "x-idx3-ubyte.gz"
  path.write_bytes(gzip.compress(head + bytes(100)))
  with pytest.raises(DataError) as info:
    idx.read_idx(path)
  assert str(info.value) == (
      f"{path}: IDX header says 67108864x32x32 uint8 = {64 * GIB} bytes, more than the limit "
      f"of {4 * GIB} bytes per file (set SYNTHPART_MAX_DECOMPRESSED to raise it)")
  seen = []
  chunks = idx.decompressed_chunks(io.BytesIO(path.read_bytes()), "x")
  with pytest.raises(DataError, match="more than the limit"):
    idx.read_idx_stream((seen.append(c) or c for c in chunks), "x")
  assert sum(map(len, seen)) == len(head) + 100  # One piece: the whole small file.


def test_limit_is_set_by_the_environment(tmp_path, monkeypatch):
  path = tmp_path / "x-idx3-ubyte.gz"
  idx.write_idx(path, np.zeros((10, 28, 28), np.uint8))
  monkeypatch.setenv("SYNTHPART_MAX_DECOMPRESSED", str(16 + 7840))
  assert idx.read_idx(path).shape == (10, 28, 28)
  monkeypatch.setenv("SYNTHPART_MAX_DECOMPRESSED", str(16 + 7839))
  with pytest.raises(DataError, match=r"x-idx3-ubyte\.gz: IDX header says 10x28x28 uint8 = 7840 "
                     r"bytes, more than the limit of 7855 bytes per file \(set "
                     r"SYNTHPART_MAX_DECOMPRESSED to raise it\)"):
    idx.read_idx(path)
  monkeypatch.setenv("SYNTHPART_MAX_DECOMPRESSED", " ")
  assert idx.max_decompressed() == idx.DEFAULT_MAX_DECOMPRESSED == 4 * GIB


@pytest.mark.parametrize("value", ["4GiB", "-1", "0", "1e9", "12 34"])
def test_invalid_limit_names_the_variable(tmp_path, monkeypatch, value):
  path = tmp_path / "x-idx1-ubyte"
  idx.write_idx(path, np.zeros(3, np.uint8))
  monkeypatch.setenv("SYNTHPART_MAX_DECOMPRESSED", value)
  with pytest.raises(DataError) as info:
    idx.read_idx(path)
  assert str(info.value) == (
      f"SYNTHPART_MAX_DECOMPRESSED={value!r} is not a byte count; set it to a positive whole "
      "number of bytes (default 4294967296)")


def test_limit_applies_to_zip_members_and_cifar_files(tmp_path, monkeypatch, fakes):
  letters = fakes.make("emnist-letters")
  archive = fakes.write_emnist_zip([letters], tmp_path / "e" / "gzip.zip")
  cifar = fakes.make("cifar10", n_train=5, n_test=1)
  files = fakes.cifar_files(cifar)
  tar = fakes.write_tar_gz(files, tmp_path / "c" / "cifar-10-binary.tar.gz")
  for name, data in files.items():
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_bytes(data)
  monkeypatch.setenv("SYNTHPART_MAX_DECOMPRESSED", "1000")
  with pytest.raises(DataError, match=r"gzip\.zip:gzip/emnist-letters-train-images-idx3-ubyte\.gz"
                     r": zip member of \d+ bytes, more than the limit of 1000 bytes per file"):
    formats.read_emnist_zip(archive, letters.spec)
  with pytest.raises(DataError, match=r"data_batch_1\.bin: batch file of 3073 bytes, more than "
                     "the limit of 1000 bytes"):
    formats.read_cifar_dir(tmp_path / "cifar-10-batches-bin", cifar.spec)
  with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz: the archive decompresses to "
                     "over 1000 bytes, more than the limit of 1000 bytes per file"):
    formats.read_cifar_tar(tar, cifar.spec)


def test_gunzip_is_bounded_by_the_limit(monkeypatch):
  packed = gzip.compress(bytes(5000))
  assert idx.gunzip(packed, "f.gz") == bytes(5000)
  monkeypatch.setenv("SYNTHPART_MAX_DECOMPRESSED", "4999")
  with pytest.raises(DataError, match=r"^f\.gz: decompresses to over 4999 bytes, more than the "
                     "limit of 4999 bytes per file"):
    idx.gunzip(packed, "f.gz")


def test_batch_size_bounds_follow_the_registry():
  assert formats.batch_records(get_spec("cifar10")) == {
      **{f"data_batch_{i}.bin": 10_000 for i in range(1, 6)}, "test_batch.bin": 10_000}
  assert formats.batch_records(get_spec("cifar100")) == {"train.bin": 50_000, "test.bin": 10_000}
  spec = get_spec("cifar100")
  formats.check_batch_size(50_000 * 3074, 50_000, spec, "train.bin")
  with pytest.raises(DataError, match=r"^train\.bin: 153700001 bytes, more than a cifar100 batch "
                     r"file holds \(50000 records of 3074 bytes = 153700000 bytes\)$"):
    formats.check_batch_size(50_000 * 3074 + 1, 50_000, spec, "train.bin")


def test_trailing_bytes_are_counted_when_few(tmp_path):
  path = tmp_path / "x-idx1-ubyte.gz"
  path.write_bytes(gzip.compress(idx.idx_bytes(np.zeros(3, np.uint8)) + bytes(5)))
  with pytest.raises(DataError, match=r"has trailing bytes: header says 3 uint8 = 3 bytes, file "
                     "holds 8$"):
    idx.read_idx(path)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float64"])
def test_payloads_larger_than_a_chunk_load_identically(tmp_path, dtype):
  """Several decompressed pieces, several gzip members, zero padding: the same array."""
  rows = 3 * idx.CHUNK // (2 * 7 * np.dtype(dtype).itemsize) + 5
  array = np.random.default_rng(0).integers(-99, 99, (rows, 7)).astype(dtype)
  data = idx.idx_bytes(array)
  third = len(data) // 3
  packed = b"".join(gzip.compress(data[i:i + third], 1) for i in range(0, len(data), third))
  for name, content in (("plain", data), ("one.gz", gzip.compress(data, 1)),
                        ("many.gz", packed), ("padded.gz", packed + bytes(3000))):
    (tmp_path / name).write_bytes(content)
    got = idx.read_idx(tmp_path / name)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative and not got.flags.writeable
    np.testing.assert_array_equal(got, array)
    np.testing.assert_array_equal(idx.read_idx_bytes(content), array)


def test_garbage_after_padding_is_counted_to_the_end(tmp_path):
  packed = gzip.compress(idx.idx_bytes(np.zeros(4, np.uint8))) + bytes(3 * idx.CHUNK) + b"x"
  with pytest.raises(DataError, match=rf"^f: {3 * idx.CHUNK + 1} bytes of garbage after the gzip "
                     "data$"):
    idx.read_idx_bytes(packed, "f")


def test_corrupt_tar_gz_checksum_is_caught(tmp_path, fakes):
  """The archive's gzip CRC is checked, though tarfile stops reading at the end-of-archive."""
  fake = fakes.make("cifar10", n_train=5, n_test=1)
  path = fakes.write_tar_gz(fakes.cifar_files(fake), tmp_path / "cifar-10-binary.tar.gz")
  data = bytearray(path.read_bytes())
  data[-6] ^= 0xFF  # inside the CRC-32 trailer
  path.write_bytes(bytes(data))
  with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz: corrupt tar archive \(corrupt "
                     "gzip data"):
    formats.read_cifar_tar(path, fake.spec)


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2", ".xz"])
def test_cifar_tar_in_any_compression_loads(tmp_path, fakes, suffix):
  fake = fakes.make("cifar100", n_train=6, n_test=3)
  path = tmp_path / "cifar-100-binary.tar.gz"
  with tarfile.open(path, f"w:{suffix[1:]}") as archive:
    for name, data in fakes.cifar_files(fake).items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  (train_images, train_labels), (test_images, test_labels) = formats.read_cifar_tar(
      path, fake.spec)
  np.testing.assert_array_equal(train_images, fake.train[0])
  np.testing.assert_array_equal(train_labels, fake.train[1])
  np.testing.assert_array_equal(test_images, fake.test[0])
  np.testing.assert_array_equal(test_labels, fake.test[1])


def test_short_batch_file_is_named(tmp_path):
  with pytest.raises(DataError, match=r"^b\.bin: ends after 10 of its 20 bytes$"):
    formats.read_batch(io.BytesIO(bytes(10)), 20, "b.bin")


@pytest.mark.parametrize("name, n_train", [("emnist-letters", 3000), ("cifar10", 2000),
                                           ("cifar100", 500)])
def test_archives_with_members_over_a_chunk_load_identically(tmp_path, fakes, name, n_train):
  fake = fakes.make(name, n_train=n_train)
  if name.startswith("emnist"):
    fakes.write_emnist_zip([fake], tmp_path / "gzip.zip")
  else:
    archive = {"cifar10": "cifar-10-binary.tar.gz", "cifar100": "cifar-100-binary.tar.gz"}[name]
    fakes.write_tar_gz(fakes.cifar_files(fake), tmp_path / archive)
  fakes.assert_loaded(load_dataset(name, tmp_path), fake)
