"""Reader and writer for the IDX format of MNIST, Fashion-MNIST and EMNIST.

An IDX file is a 4-byte big-endian magic number, one big-endian uint32 per dimension, then the
array in row-major order (big-endian for multi-byte types). The magic's first two bytes are zero,
the third names the element type and the fourth the number of dimensions, so images are
0x00000803 ([N, rows, cols] uint8) and labels 0x00000801 ([N] uint8). Files may be gzipped.

Files are streamed, never decompressed whole: the header is read first, the payload goes into an
array of exactly the size the header declares, and a file that holds more (a decompression bomb)
or less is refused as soon as that shows. No file may declare more than `max_decompressed()`
bytes: 4 GiB unless the environment variable SYNTHPART_MAX_DECOMPRESSED gives another count. The
same limit bounds the arrays of an .npz file, each and all together (`synthpart.data.npz`).

Every malformed input raises `DataError` with a one-line message naming the file; the reader
never raises anything else, whatever the bytes.

This module is longer than most (over 400 lines): the bounded, streaming decompression and the
IDX parser it feeds must be read together to see that no input decompresses past its header.
"""

from __future__ import annotations

import functools
import gzip
import io
import math
import os
import struct
import zlib
from collections.abc import Callable, Generator, Iterator
from typing import IO

import numpy as np

from synthpart.errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
GZIP_MAGIC = b"\x1f\x8b"
# numpy 1.x arrays have at most 32 dimensions; real IDX files have 1 to 4.
MAX_DIMS = 32
MAX_DECOMPRESSED_ENV = "SYNTHPART_MAX_DECOMPRESSED"
# Per file or archive member; the largest real one (EMNIST byclass training images) is 547 MB.
DEFAULT_MAX_DECOMPRESSED = 4 << 30
# Bytes read, or decompressed, at a time.
CHUNK = 1 << 20

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


class GzipError(DataError):
  """Corrupt, truncated or garbage-followed gzip data; `reason` is the message minus the file."""

  def __init__(self, source: str, reason: str):
    super().__init__(source, reason)
    self.source, self.reason = source, reason

  def __str__(self) -> str:
    return f"{self.source}: {self.reason}"


def max_decompressed() -> int:
  """The most bytes one file or archive member may decompress to.

  Raises:
    DataError: SYNTHPART_MAX_DECOMPRESSED is set but is not a positive whole number of bytes.
  """
  value = os.environ.get(MAX_DECOMPRESSED_ENV, "").strip()
  if not value:
    return DEFAULT_MAX_DECOMPRESSED
  if not (value.isascii() and value.isdigit()) or int(value) == 0:
    raise DataError(f"{MAX_DECOMPRESSED_ENV}={value!r} is not a byte count; set it to a positive "
                    f"whole number of bytes (default {DEFAULT_MAX_DECOMPRESSED})")
  return int(value)


def limit_error(source: str, claim: str, limit: int) -> DataError:
  """The error for data over the decompression limit; `claim` says how much, in bytes."""
  return DataError(f"{source}: {claim}, more than the limit of {limit} bytes per file "
                   f"(set {MAX_DECOMPRESSED_ENV} to raise it)")


def is_gzip(data: bytes | memoryview) -> bool:
  """True if `data` starts with the gzip magic bytes."""
  return bytes(data[:2]) == GZIP_MAGIC


def _read_at_least(raw: IO[bytes], data: bytes, n: int) -> bytes:
  """`data` extended from `raw` to `n` bytes, or to the end of `raw` if it ends first."""
  while len(data) < n:
    more = raw.read(CHUNK)
    if not more:
      break
    data += more
  return data


def _inflate_member(raw: IO[bytes], data: bytes, source: str) -> Generator[bytes, None, bytes]:
  """Decompresses one gzip member that starts with `data` and continues in `raw`.

  Yields pieces of at most CHUNK bytes and returns the bytes read past the member's end.
  """
  decomp = zlib.decompressobj(wbits=31)  # gzip wrapper; zlib checks the CRC-32 and size.
  full = False
  while not decomp.eof:
    if not data and not full:  # A full piece may leave output inside zlib: ask again first.
      data = raw.read(CHUNK)
      if not data:
        raise GzipError(source, "truncated gzip data (the file ends early; download it again)")
    try:
      out = decomp.decompress(data, CHUNK)
    except zlib.error as e:
      raise GzipError(source, f"corrupt gzip data ({e})") from None
    data, full = decomp.unconsumed_tail, len(out) == CHUNK
    if out:
      yield out
  return decomp.unused_data


def _next_member(raw: IO[bytes], rest: bytes, source: str) -> bytes | None:
  """The start of the gzip member after `rest`, or None if only zero padding follows.

  Raises:
    GzipError: anything else follows (the message counts the bytes up to the end of `raw`).
  """
  rest = _read_at_least(raw, rest, 2)
  if is_gzip(rest):
    return rest
  # Some tools pad gzip files with zero bytes; anything else is garbage.
  size, garbage = len(rest), bool(rest.strip(b"\0"))
  for more in iter(lambda: raw.read(CHUNK), b""):
    size, garbage = size + len(more), garbage or bool(more.strip(b"\0"))
  if garbage:
    raise GzipError(source, f"{size} bytes of garbage after the gzip data")
  return None


def gzip_chunks(raw: IO[bytes], source: str, head: bytes = b"") -> Iterator[bytes]:
  """Decompresses a gzip stream, every member, a piece at a time.

  Args:
    raw: the compressed stream, read CHUNK bytes at a time after `head`.
    source: the file's name, for error messages.
    head: bytes already read from the start of the stream.

  Yields:
    The decompressed data in pieces of at most CHUNK bytes; it is never held whole.

  Raises:
    GzipError: corrupt data (a CRC or length mismatch included), a stream that ends early, or
      bytes after the last member other than zero padding.
  """
  data: bytes | None = head
  while data is not None:
    rest = yield from _inflate_member(raw, data, source)
    data = _next_member(raw, rest, source)


def decompressed_chunks(raw: IO[bytes], source: str) -> Iterator[bytes]:
  """A stream's content in pieces of at most CHUNK bytes, gunzipped if it starts like gzip."""
  head = _read_at_least(raw, b"", 2)
  if is_gzip(head):
    yield from gzip_chunks(raw, source, head)
    return
  if head:
    yield head
  yield from iter(lambda: raw.read(CHUNK), b"")


class ChunkReader:
  """A binary stream over decompressed pieces, optionally refusing to run past a bound.

  Args:
    chunks: the pieces, each at most CHUNK bytes.
    bound: (limit, too_long): the most bytes the stream may hold, and what builds the error
      raised once more have arrived; None for no bound.
  """

  def __init__(self, chunks: Iterator[bytes],
               bound: tuple[int, Callable[[], DataError]] | None = None):
    self._chunks = chunks
    self._head = memoryview(b"")
    self._bound = bound
    self.arrived = 0

  def _take(self, n: int) -> memoryview:
    """Up to `n` next bytes (fewer at a piece's end); empty only at the end of the stream."""
    while not self._head:
      piece = next(self._chunks, None)
      if piece is None:
        return self._head
      self.arrived += len(piece)
      if self._bound is not None and self.arrived > self._bound[0]:
        raise self._bound[1]()
      self._head = memoryview(piece)
    taken, self._head = self._head[:n], self._head[n:]
    return taken

  def read(self, n: int = -1) -> bytes:
    """The next `n` bytes (all the rest if `n` < 0); fewer only at the end of the stream."""
    parts, need = [], n if n >= 0 else math.inf
    while need and (piece := self._take(int(min(need, CHUNK)))):
      parts.append(piece)
      need -= len(piece)
    return b"".join(parts)

  def readinto(self, buffer) -> int:
    """Fills `buffer` (any writable buffer) from the stream; returns how many bytes it got."""
    out = memoryview(buffer).cast("B")
    filled = 0
    while filled < len(out) and (piece := self._take(len(out) - filled)):
      out[filled:filled + len(piece)] = piece
      filled += len(piece)
    return filled

  def skip(self, most: int) -> tuple[int, bool]:
    """Reads on for at most about `most` bytes: (bytes found, whether the stream ended)."""
    found = 0
    while found <= most:
      piece = self._take(CHUNK)
      if not piece:
        return found, True
      found += len(piece)
    return found, False


def _element_type(magic: bytes | memoryview, source: str) -> tuple[np.dtype, int]:
  """(dtype, number of dimensions) from the first 4 bytes of an IDX file."""
  if len(magic) < 4:
    raise DataError(f"{source}: not an IDX file ({len(magic)} bytes, shorter than the 4-byte "
                    "magic)")
  zero, code, ndim = magic[0] << 8 | magic[1], magic[2], magic[3]
  if zero != 0 or code not in _DTYPES:
    value = struct.unpack(">I", magic[:4])[0]
    raise DataError(f"{source}: not an IDX file (magic 0x{value:08x}; expected 0x0000080N)")
  if not 1 <= ndim <= MAX_DIMS:
    raise DataError(f"{source}: IDX header declares {ndim} dimensions (supported: 1..{MAX_DIMS})")
  return _DTYPES[code], ndim


def _payload_bytes(dims: tuple[int, ...], dtype: np.dtype, source: str) -> int:
  """The payload size the header declares, in bytes."""
  # numpy refuses shapes whose nonzero dimensions overflow, even when another one is zero.
  if math.prod(d for d in dims if d) * dtype.itemsize >= 2**62:
    raise DataError(f"{source}: IDX header declares impossibly large dimensions {list(dims)}")
  return math.prod(dims) * dtype.itemsize


def _declared(dims: tuple[int, ...], dtype: np.dtype, expected: int) -> str:
  return f"header says {'x'.join(map(str, dims))} {dtype.name} = {expected} bytes"


def _size_error(source: str, dims: tuple[int, ...], dtype: np.dtype, expected: int,
                actual: int, exact: bool = True) -> DataError:
  what = "truncated" if actual < expected else "has trailing bytes"
  holds = str(actual) if exact else f"at least {actual}"
  return DataError(f"{source}: IDX data {what}: {_declared(dims, dtype, expected)}, file holds "
                   f"{holds}")


def _native(array: np.ndarray) -> np.ndarray:
  """`array` (which owns its memory when a swap is needed) in native byte order, read-only."""
  if array.dtype.itemsize > 1 and not array.dtype.isnative:
    array = array.byteswap(inplace=True).view(array.dtype.newbyteorder("="))
  array.flags.writeable = False
  return array


def parse_idx(data: bytes | memoryview, source: str = "<bytes>") -> np.ndarray:
  """Parses uncompressed IDX bytes already in memory.

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
  dtype, ndim = _element_type(view[:4], source)
  header = 4 + 4 * ndim
  if len(view) < header:
    raise DataError(f"{source}: IDX header truncated ({len(view)} bytes, needs {header})")
  dims = struct.unpack(f">{ndim}I", view[4:header])
  expected = _payload_bytes(dims, dtype, source)
  if len(view) - header != expected:
    raise _size_error(source, dims, dtype, expected, len(view) - header)
  array = np.frombuffer(view, dtype=dtype, offset=header).reshape(dims)
  return _native(array.copy()) if dtype.itemsize > 1 and not dtype.isnative else array


def read_idx_stream(chunks: Iterator[bytes], source: str) -> np.ndarray:
  """Reads one IDX file from its decompressed pieces: the header, then exactly the payload.

  The payload goes straight into a preallocated array. Reading stops, with a `DataError`, at
  the first byte past what the header declares, or before anything past the header when the
  header declares more than `max_decompressed()` bytes.

  Args:
    chunks: the file's content in pieces, e.g. from `decompressed_chunks`.
    source: the file's name, for error messages.

  Returns:
    As `parse_idx`: a read-only array [*dims] of the file's type in native byte order.
  """
  limit = max_decompressed()
  stream = ChunkReader(chunks)
  dtype, ndim = _element_type(stream.read(4), source)
  header = 4 + 4 * ndim
  dims_bytes = stream.read(4 * ndim)
  if len(dims_bytes) < 4 * ndim:
    raise DataError(f"{source}: IDX header truncated ({4 + len(dims_bytes)} bytes, needs "
                    f"{header})")
  dims = struct.unpack(f">{ndim}I", dims_bytes)
  expected = _payload_bytes(dims, dtype, source)
  if header + expected > limit:
    raise limit_error(source, f"IDX {_declared(dims, dtype, expected)}", limit)
  try:
    payload = np.empty(expected, np.uint8)
  except MemoryError:
    raise DataError(f"{source}: cannot allocate the {expected} bytes its IDX header declares "
                    "(out of memory)") from None
  got = stream.readinto(payload)
  if got < expected:
    raise _size_error(source, dims, dtype, expected, got)
  extra, ended = stream.skip(CHUNK)  # Also runs gzip's checks at the end of the data.
  if extra:
    raise _size_error(source, dims, dtype, expected, expected + extra, exact=ended)
  return _native(payload.view(dtype).reshape(dims))


def gunzip(data: bytes | memoryview, source: str) -> bytes:
  """Decompresses gzip `data` (all members), checking CRC and length.

  Args:
    data: the compressed bytes.
    source: the file's name, for error messages.

  Returns:
    The decompressed bytes, at most `max_decompressed()` of them.

  Raises:
    DataError: the data is corrupt, truncated, followed by garbage or decompresses to more than
      the limit.
  """
  limit = max_decompressed()
  too_long = functools.partial(limit_error, source, f"decompresses to over {limit} bytes", limit)
  stream = ChunkReader(gzip_chunks(io.BytesIO(data), source), (limit, too_long))
  return stream.read()


def read_idx_bytes(data: bytes | memoryview, source: str = "<bytes>") -> np.ndarray:
  """Parses IDX bytes that may be gzipped (detected by content, not by name)."""
  return read_idx_stream(decompressed_chunks(io.BytesIO(data), source), source)


def read_idx_file(raw: IO[bytes], source: str) -> np.ndarray:
  """Reads an IDX file, gzipped or not, from an open binary stream (a file, an archive member)."""
  return read_idx_stream(decompressed_chunks(raw, source), source)


def read_bytes(path: str | os.PathLike) -> bytes:
  """Reads a whole file, turning OS errors into a one-line `DataError`."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise DataError(f"{os.fspath(path)}: cannot read ({e.strerror or e})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file, gzipped or not, streaming it. See `read_idx_stream` for the result."""
  source = os.fspath(path)
  try:
    with open(path, "rb") as f:
      return read_idx_file(f, source)
  except OSError as e:
    raise DataError(f"{source}: cannot read ({e.strerror or e})") from None
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
