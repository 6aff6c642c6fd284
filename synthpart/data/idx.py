"""Reader and writer for the IDX format of MNIST, Fashion-MNIST and EMNIST.

An IDX file is a 4-byte big-endian magic number, one big-endian uint32 per dimension, then the
array in row-major order (big-endian for multi-byte types). The magic's first two bytes are zero,
the third names the element type and the fourth the number of dimensions, so images are
0x00000803 ([N, rows, cols] uint8) and labels 0x00000801 ([N] uint8). Files may be gzipped.

Every malformed input raises `DataError` with a one-line message naming the file; the reader
never raises anything else, whatever the bytes.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np

from synthpart.errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
GZIP_MAGIC = b"\x1f\x8b"
# numpy 1.x arrays have at most 32 dimensions; real IDX files have 1 to 4.
MAX_DIMS = 32

# IDX element type code -> big-endian numpy dtype.
_DTYPES: dict[int, np.dtype] = {
  0x08: np.dtype(">u1"),
  0x09: np.dtype(">i1"),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}
_CODES: dict[str, int] = {dt.newbyteorder("=").str[1:]: code for code, dt in _DTYPES.items()}


def is_gzip(data: bytes | memoryview) -> bool:
  """True if `data` starts with the gzip magic bytes."""
  return bytes(data[:2]) == GZIP_MAGIC


def gunzip(data: bytes | memoryview, source: str) -> bytes:
  """Decompresses gzip `data` (all members), checking CRC and length.

  Args:
    data: the compressed bytes.
    source: the file's name, for error messages.

  Returns:
    The decompressed bytes.

  Raises:
    DataError: the data is corrupt, truncated or followed by garbage.
  """
  parts = []
  rest = memoryview(data)
  while True:
    # wbits=31: gzip wrapper; zlib checks the trailer's CRC-32 and size itself.
    decomp = zlib.decompressobj(wbits=31)
    try:
      parts.append(decomp.decompress(rest))
    except zlib.error as e:
      raise DataError(f"{source}: corrupt gzip data ({e})") from None
    if not decomp.eof:
      raise DataError(f"{source}: truncated gzip data (the file ends early; download it again)")
    rest = memoryview(decomp.unused_data)
    # Some tools pad gzip files with zero bytes; anything else must be another member.
    if not bytes(rest).strip(b"\0"):
      break
    if not is_gzip(rest):
      raise DataError(f"{source}: {len(rest)} bytes of garbage after the gzip data")
  return parts[0] if len(parts) == 1 else b"".join(parts)


def parse_idx(data: bytes | memoryview, source: str = "<bytes>") -> np.ndarray:
  """Parses uncompressed IDX bytes.

  Args:
    data: the whole IDX file.
    source: the file's name, for error messages.

  Returns:
    A read-only array in native byte order with the file's dimensions, e.g. uint8 [N, 28, 28]
    for images and uint8 [N] for labels. It views `data` when no byte swap is needed.

  Raises:
    DataError: bad magic, unknown type, zero dimensions, or a size that disagrees with the header.
  """
  view = memoryview(data).cast("B")
  if len(view) < 4:
    raise DataError(f"{source}: not an IDX file ({len(view)} bytes, shorter than the 4-byte magic)")
  zero, code, ndim = view[0] << 8 | view[1], view[2], view[3]
  if zero != 0 or code not in _DTYPES:
    magic = struct.unpack(">I", view[:4])[0]
    raise DataError(f"{source}: not an IDX file (magic 0x{magic:08x}; expected 0x0000080N)")
  if not 1 <= ndim <= MAX_DIMS:
    raise DataError(f"{source}: IDX header declares {ndim} dimensions (supported: 1..{MAX_DIMS})")
  header = 4 + 4 * ndim
  if len(view) < header:
    raise DataError(f"{source}: IDX header truncated ({len(view)} bytes, needs {header})")
  dims = struct.unpack(f">{ndim}I", view[4:header])
  dtype = _DTYPES[code]
  # numpy refuses shapes whose nonzero dimensions overflow, even when another one is zero.
  if math.prod(d for d in dims if d) * dtype.itemsize >= 2**62:
    raise DataError(f"{source}: IDX header declares impossibly large dimensions {list(dims)}")
  expected = math.prod(dims) * dtype.itemsize
  actual = len(view) - header
  if actual != expected:
    shape = "x".join(map(str, dims))
    what = "truncated" if actual < expected else "has trailing bytes"
    raise DataError(
        f"{source}: IDX data {what}: header says {shape} {dtype.name} = {expected} bytes, "
        f"file holds {actual}")
  array = np.frombuffer(view, dtype=dtype, offset=header).reshape(dims)
  if dtype.itemsize > 1 and not dtype.isnative:
    array = array.astype(dtype.newbyteorder("="))
    array.flags.writeable = False
  return array


def read_idx_bytes(data: bytes | memoryview, source: str = "<bytes>") -> np.ndarray:
  """Parses IDX bytes that may be gzipped (detected by content, not by name)."""
  if is_gzip(data):
    data = gunzip(data, source)
  return parse_idx(data, source)


def read_bytes(path: str | os.PathLike) -> bytes:
  """Reads a whole file, turning OS errors into a one-line `DataError`."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise DataError(f"{os.fspath(path)}: cannot read ({e.strerror or e})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file, gzipped or not. See `parse_idx` for the result."""
  return read_idx_bytes(read_bytes(path), os.fspath(path))


def idx_bytes(array: np.ndarray) -> bytes:
  """Serializes an array as uncompressed IDX bytes.

  Args:
    array: any array of uint8, int8, int16, int32, float32 or float64 with 1 to 32 dimensions.

  Returns:
    The IDX file's bytes.
  """
  array = np.asarray(array)
  key = array.dtype.newbyteorder("=").str[1:]
  if key not in _CODES:
    raise ValueError(f"IDX cannot store dtype {array.dtype}")
  if not 1 <= array.ndim <= MAX_DIMS:
    raise ValueError(f"IDX needs 1 to {MAX_DIMS} dimensions, got {array.ndim}")
  code = _CODES[key]
  header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
  return header + np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> None:
  """Writes `array` as an IDX file, gzipped if `compress` (default: when the name ends in .gz)."""
  data = idx_bytes(array)
  if compress is None:
    compress = os.fspath(path).endswith(".gz")
  if compress:
    # mtime=0 keeps the output byte-for-byte reproducible.
    data = gzip.compress(data, compresslevel=6, mtime=0)
  with open(path, "wb") as f:
    f.write(data)
