"""npz files: every member's .npy header is checked, against its member, the others and the size
limit, before any array is read (`synthpart.data.npz`)."""

from __future__ import annotations

import io
import re
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from synthpart.data import load_dataset
from synthpart.data import npz as npz_lib
from synthpart.errors import DataError

MIB = 1 << 20
_BLOCK = 16 * MIB


def npy_header(shape: tuple[int, ...], dtype: str = "|u1") -> bytes:
  """The bytes of a .npy (version 1.0) header for an array of `shape` and `dtype`."""
  out = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      out, {"descr": dtype, "fortran_order": False, "shape": shape})
  return out.getvalue()


def npy(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  np.save(out, array, allow_pickle=False)
  return out.getvalue()


def write_zip(path: Path, members: dict[str, bytes],
              compression: int = zipfile.ZIP_DEFLATED) -> Path:
  with zipfile.ZipFile(path, "w", compression) as archive:
    for name, data in members.items():
      archive.writestr(name, data)
  return path


def small_members(n_train: int = 12, n_test: int = 5) -> dict[str, bytes]:
  rng = np.random.default_rng(0)
  return {"x_train.npy": npy(rng.integers(0, 255, (n_train, 4, 4, 1), dtype=np.uint8)),
          "y_train.npy": npy(rng.integers(0, 3, n_train)),
          "x_test.npy": npy(rng.integers(0, 255, (n_test, 4, 4, 1), dtype=np.uint8)),
          "y_test.npy": npy(rng.integers(0, 3, n_test))}


def write_zeros_bomb(path: Path, name: str, head: bytes, zeros: int,
                     others: dict[str, bytes]) -> Path:
  """A zip whose member `name` is `head` then `zeros` zero bytes, deflated, written without
  ever holding the zeros: after a full flush deflate starts afresh, so one compressed 16 MiB block
  is written again and again (about 16 KB per 16 MiB). `others` are added as they are."""
  crc = zlib.crc32(head)
  block = bytes(_BLOCK)
  whole, rest = divmod(zeros, _BLOCK)
  for _ in range(whole):
    crc = zlib.crc32(block, crc)
  crc = zlib.crc32(bytes(rest), crc)
  comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
  first = comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)
  piece = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH) if whole else b""
  last = comp.compress(bytes(rest)) + comp.flush()
  size = len(first) + whole * len(piece) + len(last)
  raw = name.encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, size,
                        len(head) + zeros, len(raw), 0) + raw)
    f.write(first)
    for _ in range(whole):
      f.write(piece)
    f.write(last)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, size,
                          len(head) + zeros, len(raw), 0, 0, 0, 0, 0, 0) + raw
    directory_at = f.tell()
    f.write(central)
    f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), directory_at, 0))
  with zipfile.ZipFile(path, "a") as archive:
    for other, data in others.items():
      archive.writestr(other, data)
  return path


def refused(path: Path) -> tuple[str, int]:
  """(the one-line DataError loading `path` raises, the peak bytes numpy allocated meanwhile)."""
  tracemalloc.start()
  try:
    with pytest.raises(DataError) as info:
      load_dataset(f"npz:{path}")
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  message = str(info.value)
  assert "\n" not in message, message
  return message, peak


@pytest.fixture
def no_array_read(monkeypatch):
  """Fails the test where an array's data is read."""
  def read_array(*args, **kwargs):
    raise AssertionError("an array was read before its headers were checked")
  monkeypatch.setattr(np.lib.format, "read_array", read_array)


def test_npz_bomb_is_refused_on_its_headers_in_bounded_memory(tmp_path, monkeypatch):
  """x_train: 512 MiB of zeros in about 0.5 MB, and 10 labels for it. np.load used to inflate
  it whole before the lengths were compared."""
  zeros = 512 * MIB
  head = npy_header((zeros // 784, 28, 28, 1))
  others = {"y_train.npy": npy(np.zeros(10, np.int64)),
            "x_test.npy": npy(np.zeros((2, 28, 28, 1), np.uint8)),
            "y_test.npy": npy(np.zeros(2, np.int64))}
  path = write_zeros_bomb(tmp_path / "bomb.npz", "x_train.npy", head, zeros // 784 * 784, others)
  assert path.stat().st_size < 2 * MIB
  with zipfile.ZipFile(path) as archive:  # a valid archive: its member is what it claims
    assert archive.getinfo("x_train.npy").file_size == len(head) + zeros // 784 * 784
  message, peak = refused(path)
  assert message == (f"{path}: x_train holds {zeros // 784} examples but y_train holds 10 (their "
                     f"headers say {zeros // 784}x28x28x1 uint8 = {zeros // 784 * 784} bytes and "
                     "10 int64 = 80 bytes)")
  assert peak < 8 * MIB


def test_header_claiming_a_huge_array_names_the_file_and_member(tmp_path, no_array_read):
  """10^12 x 10^6 elements: the size limit, not an out-of-memory blamed on the network."""
  members = small_members()
  members["x_train.npy"] = npy_header((10**12, 10**6)) + bytes(64)
  path = write_zip(tmp_path / "huge.npz", members)
  message, peak = refused(path)
  assert message == (f"{path}: x_train's header says 1000000000000x1000000 uint8 = "
                     f"{10**18} bytes, more than the limit of {4 << 30} bytes per file (set "
                     "SYNTHPART_MAX_DECOMPRESSED to raise it)")
  assert peak < MIB


def test_total_over_the_limit_is_refused_before_reading(tmp_path, monkeypatch, no_array_read):
  path = write_zip(tmp_path / "d.npz", small_members())
  monkeypatch.setenv("SYNTHPART_MAX_DECOMPRESSED", "250")  # each member fits, all four do not
  message, _ = refused(path)
  assert re.fullmatch(
      rf"{re.escape(str(path))}: its arrays' headers say \d+ bytes in all \(x_train 192, "
      r"y_train 96, x_test 80, y_test 40\), more than the limit of 250 bytes per file \(set "
      r"SYNTHPART_MAX_DECOMPRESSED to raise it\)", message), message


@pytest.mark.parametrize("change, pattern", [
  # The lengths of a split, and the shape of an example across splits.
  (dict(y_test=npy(np.zeros(4, np.int64))),
   r"x_test holds 5 examples but y_test holds 4 \(their headers say 5x4x4x1 uint8 = 80 bytes "
   r"and 4 int64 = 32 bytes\)$"),
  (dict(x_test=npy(np.zeros((5, 4, 3, 1), np.uint8))),
   r"x_train's examples are 4x4x1 but x_test's are 4x3x1 \(per their headers\)$"),
  # A member that holds less, or more, than its header says.
  (dict(x_train=npy_header((12, 4, 4, 1)) + bytes(100)),
   r"x_train is truncated: its header says 12x4x4x1 uint8 = 192 bytes, but its member holds 100 "
   r"bytes of data$"),
  (dict(y_train=npy(np.zeros(12, np.int64)) + bytes(8)),
   r"y_train's member holds 104 bytes of data, more than its header's 12 int64 = 96 bytes; the "
   r"file is damaged$"),
  # Not an array at all, or not one numpy would write.
  (dict(x_train=b"x_train as text"),
   r"x_train is not a \.npy array \(no NUMPY magic at the start of x_train\.npy\); write the "
   r"file with np\.savez$"),
  (dict(x_train=b"\x93NUMPY\x07\x00" + bytes(20)),
   r"x_train is a \.npy array of format version 7\.0, which numpy does not write"),
  (dict(y_train=b"\x93NUMPY\x01\x00\x10\x00{'descr': 'nonsense'}"),
   r"y_train has a malformed \.npy header \("),
  (dict(y_train=npy_header((-3,), "<i8")), r"y_train's header gives a negative dimension \(-3\)$"),
  (dict(y_train=npy_header((12,), "|O") + bytes(96)),
   r"y_train holds pickled Python objects \(dtype object\), which are never loaded"),
])
def test_bad_headers_are_refused_before_any_array_is_read(tmp_path, no_array_read, change,
                                                          pattern):
  members = small_members()
  members.update({f"{key}.npy": data for key, data in change.items()})
  path = write_zip(tmp_path / "bad.npz", members)
  message, _ = refused(path)
  assert re.match(rf"{re.escape(str(path))}: {pattern}", message), message


def test_checked_files_still_load(tmp_path):
  """What np.savez and np.savez_compressed write, members named with or without .npy."""
  rng = np.random.default_rng(1)
  x = rng.random((20, 6)).astype(np.float64)
  y = rng.integers(0, 4, 20).astype(np.uint8)
  np.savez_compressed(tmp_path / "c.npz", x_train=x[:15], y_train=y[:15], x_test=x[15:],
                      y_test=y[15:], num_classes=np.int64(4))
  ds = load_dataset(f"npz:{tmp_path / 'c.npz'}")
  np.testing.assert_array_equal(ds.train_images, x[:15].astype(np.float32))
  assert ds.num_classes == 4 and ds.test_labels.tolist() == y[15:].tolist()
  members = small_members()
  members["x_test"] = members.pop("x_test.npy")  # np.load finds "x_test" as well
  ds = load_dataset(f"npz:{write_zip(tmp_path / 'plain.npz', members)}")
  assert ds.test_images.shape == (5, 4, 4, 1)
  fortran = np.asfortranarray(rng.integers(0, 255, (12, 16), dtype=np.uint8))
  members = small_members()
  members["x_train.npy"] = npy(fortran)
  members["x_test.npy"] = npy(np.zeros((5, 16), np.uint8))
  ds = load_dataset(f"npz:{write_zip(tmp_path / 'f.npz', members)}")
  np.testing.assert_array_equal(ds.train_images, fortran)


def test_damaged_member_data_is_one_line(tmp_path):
  members = small_members()
  members["x_train.npy"] = npy(np.ones((12, 64, 64, 1), np.uint8))  # past the first read
  members["x_test.npy"] = npy(np.ones((5, 64, 64, 1), np.uint8))
  path = write_zip(tmp_path / "crc.npz", members, zipfile.ZIP_STORED)
  data = bytearray(path.read_bytes())
  with zipfile.ZipFile(path) as archive:
    info = archive.getinfo("x_train.npy")
  # The last byte of x_train's (stored) data: its header is intact, its CRC no longer holds.
  end = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size
  data[end - 1] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: cannot read x_train \(Bad "
                     "CRC-32"):
    load_dataset(f"npz:{path}")


def test_member_name_follows_np_load():
  assert npz_lib.member_name(["a.npy", "a"], "a") == "a.npy"
  assert npz_lib.member_name(["a"], "a") == "a"
  assert npz_lib.member_name(["b.npy"], "a") is None
