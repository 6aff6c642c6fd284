"""IDX reading and writing, including malformed input and a fuzz test of the parser."""

import gzip
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthpart.data import idx
from synthpart.errors import DataError


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_write_then_read_round_trips(tmp_path, dtype, suffix):
  array = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
  path = tmp_path / f"x-idx3-ubyte{suffix}"
  idx.write_idx(path, array)
  assert (path.read_bytes()[:2] == b"\x1f\x8b") == bool(suffix)
  got = idx.read_idx(path)
  assert got.dtype == np.dtype(dtype) and got.dtype.isnative
  np.testing.assert_array_equal(got, array)


def test_header_layout_matches_the_format():
  images = idx.idx_bytes(np.zeros((2, 28, 28), np.uint8))
  labels = idx.idx_bytes(np.zeros(2, np.uint8))
  assert struct.unpack(">IIII", images[:16]) == (idx.IMAGES_MAGIC, 2, 28, 28)
  assert struct.unpack(">II", labels[:8]) == (idx.LABELS_MAGIC, 2)
  assert len(images) == 16 + 2 * 28 * 28


def test_gzip_is_detected_by_content_not_name(tmp_path):
  array = np.arange(12, dtype=np.uint8).reshape(3, 4)
  (tmp_path / "plain.gz").write_bytes(idx.idx_bytes(array))
  (tmp_path / "packed").write_bytes(gzip.compress(idx.idx_bytes(array)))
  np.testing.assert_array_equal(idx.read_idx(tmp_path / "plain.gz"), array)
  np.testing.assert_array_equal(idx.read_idx(tmp_path / "packed"), array)


def test_multi_member_gzip_is_read_whole():
  data = idx.idx_bytes(np.arange(100, dtype=np.uint8))
  packed = gzip.compress(data[:37]) + gzip.compress(data[37:])
  np.testing.assert_array_equal(idx.read_idx_bytes(packed), np.arange(100))


def _gz(array):
  return gzip.compress(idx.idx_bytes(array), mtime=0)


@pytest.mark.parametrize("data, message", [
  (b"\x00\x00", "shorter than the 4-byte magic"),
  (struct.pack(">II", 0x00000703, 1) + b"\x00", "not an IDX file (magic 0x00000703"),
  (struct.pack(">II", 0x00000A01, 1) + b"\x00", "not an IDX file"),
  (struct.pack(">I", 0x00000800), "declares 0 dimensions"),
  (struct.pack(">IIII", 0x00000803, 0, 2**31, 2**31), "impossibly large dimensions"),
  (struct.pack(">I", 0x00000803) + b"\x00\x00", "header truncated"),
  (struct.pack(">IIII", 0x00000803, 2, 2, 2) + bytes(7), "truncated: header says 2x2x2"),
  (struct.pack(">II", 0x00000801, 2) + bytes(3), "has trailing bytes"),
  (_gz(np.zeros(100, np.uint8))[:20], "truncated gzip data"),
  (b"\x1f\x8b" + bytes(30), "corrupt gzip data"),
  (_gz(np.zeros(10, np.uint8)) + b"junk", "garbage after the gzip data"),
])
def test_malformed_input_raises_one_line_data_error(data, message):
  with pytest.raises(DataError) as info:
    idx.read_idx_bytes(data, "some/file-ubyte.gz")
  text = str(info.value)
  assert text.startswith("some/file-ubyte.gz: ") and message in text
  assert "\n" not in text


def test_corrupt_gzip_crc_is_caught():
  packed = bytearray(_gz(np.arange(200, dtype=np.uint8)))
  packed[-6] ^= 0xFF  # inside the CRC-32 trailer
  with pytest.raises(DataError, match="corrupt gzip data"):
    idx.read_idx_bytes(bytes(packed), "f.gz")


def test_unreadable_file_names_it(tmp_path):
  with pytest.raises(DataError, match=r"missing-ubyte: cannot read"):
    idx.read_idx(tmp_path / "missing-ubyte")


def test_writer_rejects_what_idx_cannot_hold():
  with pytest.raises(ValueError):
    idx.idx_bytes(np.zeros(3, np.int64))
  with pytest.raises(ValueError):
    idx.idx_bytes(np.zeros((), np.uint8))


def _valid_idx():
  """Well-formed IDX files of random small shapes and types."""
  shapes = st.lists(st.integers(0, 4), min_size=1, max_size=4)
  dtypes = st.sampled_from(["uint8", "int8", "int16", "int32", "float32", "float64"])
  return st.builds(lambda s, d, seed: idx.idx_bytes(
      np.random.default_rng(seed).integers(-100, 100, s).astype(d)), shapes, dtypes,
      st.integers(0, 2**16))


def _mutated(data, draw):
  """Flips, truncates or extends bytes of `data`."""
  data = bytearray(data)
  for _ in range(draw(st.integers(0, 3))):
    if data:
      data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
  cut = draw(st.integers(0, len(data)))
  return bytes(data[:cut]) + draw(st.binary(max_size=8))


@st.composite
def idx_like_bytes(draw):
  """Bytes near the IDX format: random, valid, mutated valid, and (mutated) gzip of those."""
  kind = draw(st.sampled_from(["random", "valid", "mutated", "gzip", "gzip-mutated", "header"]))
  if kind == "random":
    return draw(st.binary(max_size=300))
  if kind == "header":
    ndim = draw(st.integers(0, 40))
    dims = draw(st.lists(st.integers(0, 2**32 - 1), min_size=ndim, max_size=ndim))
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x0A, 0xFF]))
    return bytes([0, 0, code, ndim]) + struct.pack(f">{ndim}I", *dims) + draw(
        st.binary(max_size=64))
  valid = draw(_valid_idx())
  if kind == "valid":
    return valid
  if kind == "mutated":
    return _mutated(valid, draw)
  packed = gzip.compress(valid, mtime=0)
  return packed if kind == "gzip" else _mutated(packed, draw)


@settings(max_examples=600, deadline=None, database=None)
@given(idx_like_bytes())
def test_fuzz_any_bytes_parse_or_raise_data_error(data):
  try:
    array = idx.read_idx_bytes(data, "fuzz")
  except DataError as e:
    assert str(e).startswith("fuzz: ") and "\n" not in str(e)
    return
  assert isinstance(array, np.ndarray) and array.dtype.isnative and 1 <= array.ndim
  if not idx.is_gzip(data):
    # A successful parse accounts for every byte: writing it back gives the input.
    assert idx.idx_bytes(array) == data
