"""Reading a dataset's arrays from a .npz file, every member's header checked before any array.

An .npz is a zip of .npy members. Before any array is read, every member the dataset needs
(`x_train`, `y_train`, `x_test`, `y_test`, and `num_classes` where present) has its .npy header
read (`numpy.lib.format.read_magic`, `read_array_header_*`) and checked:

- it is a .npy array of plain numbers (no pickled objects), with a well-formed shape;
- its header's shape and dtype account for exactly the bytes the zip member holds;
- it decodes to at most `idx.max_decompressed()` bytes (4 GiB unless SYNTHPART_MAX_DECOMPRESSED
  says otherwise), and so do all of them together;
- images and labels of a split have the same number of examples, and train and test images the
  same shape per example.

So a file whose headers already show that it cannot be a dataset, or one that would decompress
to gigabytes (an npz bomb), is refused on one line naming the file and the member, having
allocated nothing. The arrays are then read with `numpy.lib.format.read_array`, which reads no
more than its member holds. The values themselves (dtypes, label ranges) are checked afterwards,
by `from_arrays`.
"""

from __future__ import annotations

import dataclasses
import math
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from synthpart.data import idx
from synthpart.errors import DataError

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_KEYS = ("num_classes",)

# .npy format versions numpy writes: 1.0, 2.0 (headers over 64 KiB), 3.0 (utf-8 field names).
_VERSIONS = ((1, 0), (2, 0), (3, 0))
# What reading a member may raise: damage, and members numpy's own writer never makes
# (encrypted: RuntimeError; an unsupported compression: NotImplementedError).
_ZIP_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError,
               NotImplementedError)
_READ_ERRORS = (*_ZIP_ERRORS, ValueError)


@dataclasses.dataclass(frozen=True)
class Header:
  """One .npy member's header.

  Attributes:
    key: the array's name in the .npz (without ".npy").
    member: the zip member's name.
    shape: the array's shape.
    dtype: its dtype.
    offset: where its data starts in the member, in bytes.
  """
  key: str
  member: str
  shape: tuple[int, ...]
  dtype: np.dtype
  offset: int

  @property
  def nbytes(self) -> int:
    """The bytes the array decodes to."""
    return math.prod(self.shape) * self.dtype.itemsize

  def describe(self) -> str:
    """e.g. "1000x784 uint8 = 784000 bytes"."""
    return f"{'x'.join(map(str, self.shape)) or 'scalar'} {self.dtype} = {self.nbytes} bytes"


def _one_line(error: BaseException) -> str:
  return " ".join(str(error).split())[:200] or type(error).__name__


def member_name(names: Sequence[str], key: str) -> str | None:
  """The member holding array `key`, as `np.load` finds it: "key.npy", else "key"."""
  for name in (f"{key}.npy", key):
    if name in names:
      return name
  return None


def read_header(stream: IO[bytes], key: str, member: str, where: str) -> Header:
  """The .npy header at the start of `stream`, one member of the .npz `where`.

  Raises:
    DataError: not a .npy array, an unknown format version, a malformed header, pickled
      objects, or a negative dimension.
  """
  try:
    version = np.lib.format.read_magic(stream)
  except ValueError:
    raise DataError(f"{where}: {key} is not a .npy array (no NUMPY magic at the start of "
                    f"{member}); write the file with np.savez") from None
  except _READ_ERRORS as e:
    raise DataError(f"{where}: cannot read {key}'s header ({_one_line(e)})") from None
  if version not in _VERSIONS:
    raise DataError(f"{where}: {key} is a .npy array of format version "
                    f"{version[0]}.{version[1]}, which numpy does not write (1.0, 2.0, 3.0)")
  read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
          else np.lib.format.read_array_header_2_0)
  try:
    shape, _, dtype = read(stream)
  except _ZIP_ERRORS as e:
    raise DataError(f"{where}: cannot read {key}'s header ({_one_line(e)})") from None
  except Exception as e:  # noqa: BLE001  (parsing a malformed header raises many types)
    raise DataError(f"{where}: {key} has a malformed .npy header ({_one_line(e)})") from None
  if dtype.hasobject:
    raise DataError(f"{where}: {key} holds pickled Python objects (dtype object), which are "
                    f"never loaded; save numeric arrays")
  if any(n < 0 for n in shape):
    raise DataError(f"{where}: {key}'s header gives a negative dimension "
                    f"({'x'.join(map(str, shape))})")
  return Header(key, member, tuple(shape), dtype, stream.tell())


def check_member(header: Header, info: zipfile.ZipInfo, where: str, limit: int) -> None:
  """Checks one header against the limit and against the bytes its zip member holds."""
  if header.nbytes > limit:
    raise idx.limit_error(where, f"{header.key}'s header says {header.describe()}", limit)
  held = info.file_size - header.offset
  if held < header.nbytes:
    raise DataError(f"{where}: {header.key} is truncated: its header says {header.describe()}, "
                    f"but its member holds {max(held, 0)} bytes of data")
  if held > header.nbytes:
    raise DataError(f"{where}: {header.key}'s member holds {held} bytes of data, more than its "
                    f"header's {header.describe()}; the file is damaged")


def _examples(header: Header) -> int | None:
  return header.shape[0] if header.shape else None


def _per_example(header: Header) -> tuple[int, ...] | None:
  """The shape of one image, [H, W] read as [H, W, 1] as `from_arrays` does; None where the
  array is no images at all (`from_arrays` says why, once it is read)."""
  is_images = header.dtype == np.uint8 or header.dtype.kind == "f"
  if not is_images or len(header.shape) not in (2, 3, 4):
    return None
  shape = header.shape[1:]
  return (*shape, 1) if len(shape) == 2 else shape


def check_consistent(headers: dict[str, Header], where: str, limit: int) -> None:
  """Checks the headers present against each other: a split's images and labels hold as many
  examples, train and test images have the same shape per example, and all the arrays together
  fit the limit."""
  for split in ("train", "test"):
    x, y = headers.get(f"x_{split}"), headers.get(f"y_{split}")
    if x is None or y is None:
      continue
    nx, ny = _examples(x), _examples(y)
    if nx is not None and ny is not None and nx != ny:
      raise DataError(f"{where}: x_{split} holds {nx} examples but y_{split} holds {ny} "
                      f"(their headers say {x.describe()} and {y.describe()})")
  train, test = headers.get("x_train"), headers.get("x_test")
  shapes = [None if h is None else _per_example(h) for h in (train, test)]
  if train is not None and test is not None and None not in shapes and shapes[0] != shapes[1]:
    raise DataError(f"{where}: x_train's examples are {'x'.join(map(str, train.shape[1:]))} "
                    f"but x_test's are {'x'.join(map(str, test.shape[1:]))} (per their headers)")
  total = sum(h.nbytes for h in headers.values())
  if total > limit:
    parts = ", ".join(f"{key} {h.nbytes}" for key, h in headers.items())
    raise idx.limit_error(where, f"its arrays' headers say {total} bytes in all ({parts})",
                          limit)


def read_npz_arrays(file: Path, where: str) -> dict[str, np.ndarray]:
  """The arrays `ARRAY_KEYS` (and `OPTIONAL_KEYS` present) of the .npz `file`, each header
  checked first (see the module docstring); `where` names the file in messages. Keys missing
  from the file are missing from the result (the caller says which it needs).

  Raises:
    DataError: not a zip archive, or a member unreadable or refused, in one line naming the
      file and the member.
  """
  limit = idx.max_decompressed()
  try:
    with zipfile.ZipFile(file) as archive:
      names = archive.namelist()
      members = {key: name for key in (*ARRAY_KEYS, *OPTIONAL_KEYS)
                 if (name := member_name(names, key)) is not None}
      headers: dict[str, Header] = {}
      for key, name in members.items():
        info = archive.getinfo(name)
        with archive.open(info) as stream:
          headers[key] = read_header(stream, key, name, where)
        check_member(headers[key], info, where, limit)
      check_consistent(headers, where, limit)
      arrays = {}
      for key, name in members.items():
        with archive.open(name) as stream:
          try:
            arrays[key] = np.lib.format.read_array(stream, allow_pickle=False)
          except _READ_ERRORS as e:
            raise DataError(f"{where}: cannot read {key} ({_one_line(e)})") from None
  except zipfile.BadZipFile as e:
    raise DataError(f"{where}: cannot read as .npz ({_one_line(e)})") from None
  except OSError as e:
    raise DataError(f"{where}: cannot read ({e.strerror or _one_line(e)})") from None
  return arrays
