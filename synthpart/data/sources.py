"""Where a dataset's files are looked for, and loading them from there.

Sources are tried in this order; the first complete copy wins:

1. `data_dir`, when given, and its subdirectories named after the dataset (`<data_dir>/<name>`).
   When `data_dir` is given it is the only local place searched, so a mistyped path fails loudly
   instead of silently using another copy, and `download=True` downloads into it. Accepted:
   - IDX files, gzipped or not, under their original names (`train-images-idx3-ubyte[.gz]`,
     `t10k-labels-idx1-ubyte[.gz]`, ...; EMNIST: `emnist-<split>-train-images-idx3-ubyte[.gz]`,
     also inside a `gzip/` subdirectory as NIST's zip extracts);
   - NIST's EMNIST `gzip.zip`, read in place;
   - CIFAR's binary archives `cifar-10-binary.tar.gz` / `cifar-100-binary.tar.gz`, read in
     place, or their extracted `*.bin` batch files (never the pickled Python version);
   - a TFDS-prepared array_record directory (`<data_dir>/<tfds name>/<version>/`).
2. The cache, `$SYNTHPART_DATA/<name>` (default `$XDG_CACHE_HOME/synthpart`, i.e.
   `~/.cache/synthpart`), in the same layouts. Downloads land here. EMNIST's splits share
   `<cache>/emnist/gzip.zip`.
3. `/usr/share/datasets/<name>`, where Debian packages install datasets (`dataset-fashion-mnist`).
4. TFDS: a prepared array_record copy under `$TFDS_DATA_DIR` (default `~/tensorflow_datasets`),
   read with `tfds.data_source` (needs tensorflow-datasets, not TensorFlow).
5. With `download=True`: the published URLs (or `$SYNTHPART_MIRROR`), checked against their
   sha256 before use.

`digits`, the offline default, always comes from scikit-learn's bundled copy; `data_dir` does not
apply to it.

Two kinds of names bypass the search, and `data_dir` and `download` do not apply to them:
`npz:PATH` reads the arrays `x_train, y_train, x_test, y_test` (and optionally `num_classes`) from
a `.npz` file at PATH (`read_npz`, relative to the working directory; every header is checked
before any array is read, see `synthpart.data.npz`), and a name registered with
`register_dataset` calls its loader (`load_registered`).

This module is longer than most (over 400 lines): the search order above, and reading from each
kind of place it names, are one piece of behaviour that must read as a whole.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from synthpart.data import download as download_lib
from synthpart.data import formats
from synthpart.data.catalog import (
  CIFAR10,
  CIFAR100,
  EMNIST,
  ROLES,
  SKLEARN,
  DatasetSpec,
  idx_filenames,
)
from synthpart.data.dataset import Dataset, as_array, from_arrays, read_only
from synthpart.data.npz import ARRAY_KEYS, read_npz_arrays
from synthpart.errors import DataError

SYSTEM_ROOT = Path("/usr/share/datasets")
CACHE_ENV = "SYNTHPART_DATA"
TFDS_ENV = "TFDS_DATA_DIR"

# Location kinds.
IDX_FILES = "idx"
EMNIST_ZIP = "emnist-zip"
CIFAR_TAR = "cifar-tar"
CIFAR_DIR = "cifar-dir"
TFDS = "tfds"
BUNDLED = "bundled"

_CIFAR_ARCHIVES = {CIFAR10: "cifar-10-binary.tar.gz", CIFAR100: "cifar-100-binary.tar.gz"}
_CIFAR_EXTRACTED = {CIFAR10: "cifar-10-batches-bin", CIFAR100: "cifar-100-binary"}


@dataclasses.dataclass(frozen=True)
class Location:
  """A complete copy of a dataset's files, found but not yet read.

  Attributes:
    kind: IDX_FILES, EMNIST_ZIP, CIFAR_TAR, CIFAR_DIR, TFDS or BUNDLED.
    path: the directory or archive; for TFDS the data_dir root.
    files: for IDX_FILES, the file of each role.
    tfds_version: for TFDS, the prepared version found.
  """
  kind: str
  path: Path
  files: Mapping[str, Path] = dataclasses.field(default_factory=dict)
  tfds_version: str | None = None

  def describe(self) -> str:
    if self.kind == TFDS:
      return f"{self.path} (TFDS, version {self.tfds_version})"
    return os.fspath(self.path)


@dataclasses.dataclass(frozen=True)
class Search:
  """What looking for a dataset found.

  Attributes:
    found: the first complete copy, or None.
    searched: every directory looked at, in order.
    incomplete: (directory, what is missing there) for copies that lack files.
  """
  found: Location | None
  searched: tuple[Path, ...]
  incomplete: tuple[tuple[Path, str], ...] = ()


def cache_root() -> Path:
  """`$SYNTHPART_DATA`, else `$XDG_CACHE_HOME/synthpart`, else `~/.cache/synthpart`."""
  if os.environ.get(CACHE_ENV):
    return Path(os.environ[CACHE_ENV]).expanduser()
  xdg = os.environ.get("XDG_CACHE_HOME")
  base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
  return base / "synthpart"


def tfds_root() -> Path:
  """`$TFDS_DATA_DIR`, else `~/tensorflow_datasets` (TFDS's own default)."""
  return Path(os.environ.get(TFDS_ENV) or Path.home() / "tensorflow_datasets").expanduser()


def download_dir(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> Path:
  """Where `download=True` puts a dataset's files: `<data_dir or cache>/<dir name>`."""
  root = Path(data_dir).expanduser() if data_dir is not None else cache_root()
  return root / spec.dirnames[-1 if spec.layout == EMNIST else 0]


def _listdir(directory: Path) -> set[str] | None:
  """Entries of a directory; None if it does not exist; `DataError` if it cannot be read."""
  try:
    return set(os.listdir(directory))
  except (FileNotFoundError, NotADirectoryError):
    return None
  except OSError as e:
    raise DataError(f"{directory}: cannot read directory ({e.strerror or e})") from None


def _probe_idx(spec: DatasetSpec, directory: Path, entries: set[str]) -> Location | str | None:
  """Complete IDX files in `directory`: a Location, a description of what is missing, or None."""
  names = idx_filenames(spec)
  files = {}
  for role, name in names.items():
    # Uncompressed first: it is faster to read when both are present.
    for candidate in (name, name + ".gz"):
      if candidate in entries and (directory / candidate).is_file():
        files[role] = directory / candidate
        break
  if len(files) == len(names):
    return Location(IDX_FILES, directory, files)
  if files:
    missing = [names[role] + "[.gz]" for role in ROLES if role not in files]
    return f"missing {', '.join(missing)}"
  return None


def _probe_cifar(spec: DatasetSpec, directory: Path, entries: set[str]) -> Location | str | None:
  archive = _CIFAR_ARCHIVES[spec.layout]
  if archive in entries and (directory / archive).is_file():
    return Location(CIFAR_TAR, directory / archive)
  members = formats.cifar_members(spec)
  wanted = [name for names in members.values() for name in names]
  for sub in (directory / _CIFAR_EXTRACTED[spec.layout], directory):
    sub_entries = entries if sub == directory else (_listdir(sub) or set())
    present = [name for name in wanted if name in sub_entries]
    if len(present) == len(wanted):
      return Location(CIFAR_DIR, sub)
    if present:
      return f"missing {', '.join(n for n in wanted if n not in present)} in {sub}"
  return None


def probe(spec: DatasetSpec, directory: Path) -> Location | str | None:
  """Looks for a complete copy of `spec` directly in `directory`.

  Returns:
    A Location; or a description of what is missing when some files are there; or None.

  Raises:
    DataError: the directory exists but cannot be read.
  """
  entries = _listdir(directory)
  if entries is None:
    return None
  if spec.layout in (CIFAR10, CIFAR100):
    return _probe_cifar(spec, directory, entries)
  result = _probe_idx(spec, directory, entries)
  if spec.layout == EMNIST and not isinstance(result, Location):
    extracted = directory / "gzip"
    if "gzip" in entries and extracted.is_dir():
      inner = _probe_idx(spec, extracted, _listdir(extracted) or set())
      if isinstance(inner, Location) or (inner and not result):
        result = inner
    if not isinstance(result, Location) and "gzip.zip" in entries:
      return Location(EMNIST_ZIP, directory / "gzip.zip")
  return result


def _version_key(version: str) -> tuple[int, ...]:
  return tuple(int(p) for p in re.findall(r"\d+", version))


def probe_tfds(spec: DatasetSpec, root: Path) -> Location | str | None:
  """Looks for a TFDS-prepared copy of `spec` under the TFDS data_dir `root`."""
  if spec.tfds_name is None:
    return None
  base = root / spec.tfds_name
  versions = [v for v in (_listdir(base) or ()) if re.fullmatch(r"\d+\.\d+\.\d+", v)]
  for version in sorted(versions, key=_version_key, reverse=True):
    entries = _listdir(base / version) or set()
    if "dataset_info.json" not in entries:
      continue
    if any(".array_record" in e for e in entries):
      return Location(TFDS, root, tfds_version=version)
    return (f"TFDS copy {spec.tfds_name}:{version} has no array_record files; "
            "tfds.data_source needs file_format='array_record'")
  return None


def candidate_dirs(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> list[Path]:
  """Directories searched for `spec`'s files (TFDS roots excepted), in order."""
  if data_dir is not None:
    root = Path(data_dir).expanduser()
    return [root, *(root / name for name in spec.dirnames)]
  return [root / name for root in (cache_root(), SYSTEM_ROOT) for name in spec.dirnames]


def search(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> Search:
  """Looks for `spec`'s files in the documented order without reading them.

  Raises:
    DataError: `data_dir` is not a readable directory, or a searched directory is unreadable.
  """
  if spec.layout == SKLEARN:
    return Search(Location(BUNDLED, Path("sklearn")), ())
  if data_dir is not None:
    root = Path(data_dir).expanduser()
    if _listdir(root) is None:
      raise DataError(f"{root}: no such directory (given as data_dir for {spec.name})")
  searched: list[Path] = []
  incomplete: list[tuple[Path, str]] = []
  dirs: list[tuple[Path, Callable[[DatasetSpec, Path], Location | str | None]]] = [
      (d, probe) for d in candidate_dirs(spec, data_dir)]
  tfds_roots = [Path(data_dir).expanduser()] if data_dir is not None else [tfds_root()]
  dirs += [(r, probe_tfds) for r in tfds_roots]
  for directory, probe_fn in dirs:
    searched.append(directory)
    result = probe_fn(spec, directory)
    if isinstance(result, Location):
      return Search(result, tuple(searched), tuple(incomplete))
    if result:
      incomplete.append((directory, result))
  return Search(None, tuple(searched), tuple(incomplete))


def expected_files(spec: DatasetSpec) -> list[str]:
  """Names of the files a user can put in place, e.g. for error messages."""
  if spec.remotes:
    return [remote.filename for remote in spec.remotes]
  return [name + ".gz" for name in idx_filenames(spec).values()]


def not_found_error(spec: DatasetSpec, result: Search,
                    data_dir: str | os.PathLike | None) -> DataError:
  """A one-line error saying where the files were looked for and where to put them."""
  if result.incomplete:
    directory, what = result.incomplete[0]
    return DataError(f"{directory}: incomplete copy of {spec.name} ({what})")
  where = download_dir(spec, data_dir)
  files = ", ".join(expected_files(spec))
  hint = f"; or download it: synthpart data download {spec.name}" if spec.downloadable else ""
  looked = ", ".join(map(os.fspath, result.searched))
  return DataError(f"{spec.name}: not found in {looked}; put {files} in {where}{hint}")


def fetch_dataset(spec: DatasetSpec, directory: Path, *, progress: bool = True,
                  mirror: str | None = None) -> Path:
  """Downloads `spec`'s published files into `directory`, skipping those already complete."""
  if not spec.remotes:
    raise DataError(f"{spec.name}: no published download; put its files in {directory}")
  for remote in spec.remotes:
    dest = directory / remote.filename
    if dest.is_file():
      continue  # Only verified files ever get their final name.
    try:
      download_lib.fetch_any(download_lib.urls_for(remote.filename, remote.urls, mirror), dest,
                             size=remote.size, sha256=remote.sha256, progress=progress)
    except DataError as e:
      raise DataError(f"cannot download {spec.name}: {e}; if offline, put "
                      f"{', '.join(expected_files(spec))} in {directory}") from None
  return directory


def read_location(spec: DatasetSpec, location: Location) -> Dataset:
  """Reads and validates the files at `location` into a `Dataset`."""
  if location.kind == BUNDLED:
    (train, test), source = formats.read_sklearn_digits(spec)
  else:
    readers = {
      IDX_FILES: lambda: formats.read_idx_files(location.files, spec),
      EMNIST_ZIP: lambda: formats.read_emnist_zip(location.path, spec),
      CIFAR_TAR: lambda: formats.read_cifar_tar(location.path, spec),
      CIFAR_DIR: lambda: formats.read_cifar_dir(location.path, spec),
      TFDS: lambda: formats.read_tfds(
          location.path, dataclasses.replace(spec, tfds_name=f"{spec.tfds_name}:"
                                             f"{location.tfds_version}")),
    }
    train, test = readers[location.kind]()
    source = location.describe()
  return Dataset(
      name=spec.name, num_classes=spec.num_classes,
      train_images=read_only(train[0]), train_labels=read_only(train[1]),
      test_images=read_only(test[0]), test_labels=read_only(test[1]), source=source)


def locate(spec: DatasetSpec, data_dir: str | os.PathLike | None = None, *,
           download: bool = False, progress: bool = True,
           mirror: str | None = None) -> Location:
  """Finds a complete copy of `spec`, downloading it if allowed and needed.

  Raises:
    DataError: not found (and not downloaded), or the download failed.
  """
  if download and data_dir is not None and not Path(data_dir).expanduser().exists():
    result = Search(None, (Path(data_dir).expanduser(),))  # Created by the download below.
  else:
    result = search(spec, data_dir)
  if result.found is not None:
    return result.found
  if not download or not spec.downloadable:
    raise not_found_error(spec, result, data_dir)
  directory = fetch_dataset(spec, download_dir(spec, data_dir), progress=progress, mirror=mirror)
  found = probe(spec, directory)
  if not isinstance(found, Location):
    raise DataError(f"{directory}: downloaded files are incomplete ({found})")
  return found


def load_spec(spec: DatasetSpec, data_dir: str | os.PathLike | None = None, *,
              download: bool = False, progress: bool = True,
              mirror: str | None = None) -> Dataset:
  """Finds (or downloads) and reads `spec`'s data. See the module docstring for the order."""
  location = locate(spec, data_dir, download=download, progress=progress, mirror=mirror)
  return read_location(spec, location)


def _one_line(error: BaseException) -> str:
  return " ".join(str(error).split())[:200] or type(error).__name__


def _num_classes_value(value: Any, where: str) -> int:
  """A stored `num_classes` (an int, or an integer array of one element) as an int."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return int(value)
  array = as_array(value, f"{where}: num_classes")
  if not np.issubdtype(array.dtype, np.integer) or array.size != 1:
    shape = "x".join(map(str, array.shape)) or "scalar"
    raise DataError(f"{where}: num_classes must be one integer, got {array.dtype} {shape}")
  return int(array.reshape(()))


def arrays_to_dataset(name: str, arrays: Mapping[str, Any], where: str, source: str) -> Dataset:
  """A `Dataset` from a mapping holding `ARRAY_KEYS` and optionally "num_classes".

  Other keys are ignored. `where` names the mapping (a file, a loader) in messages.

  Raises:
    DataError: a key is missing, or an array is unusable (see `from_arrays`).
  """
  missing = [key for key in ARRAY_KEYS if key not in arrays]
  if missing:
    raise DataError(f"{where}: no {', '.join(missing)}; a dataset needs the arrays "
                    f"{', '.join(ARRAY_KEYS)} (and optionally num_classes)")
  num_classes = arrays.get("num_classes")
  if num_classes is not None:
    num_classes = _num_classes_value(num_classes, where)
  return from_arrays(name, *(arrays[key] for key in ARRAY_KEYS), num_classes=num_classes,
                     source=source)


def read_npz(path: str | os.PathLike, name: str) -> Dataset:
  """Reads a dataset from a .npz file, as `np.savez(path, x_train=..., y_train=..., ...)` writes.

  Args:
    path: the file; `~` is expanded, relative paths start at the working directory.
    name: the dataset's name, e.g. "npz:data/mine.npz".

  Returns:
    The dataset from the arrays `x_train, y_train, x_test, y_test` (shapes and dtypes as
    `from_arrays` accepts) and the optional integer `num_classes` (default: largest label + 1).
    Other keys are ignored; nothing is ever unpickled. Every array's header is checked before
    any array is read (`synthpart.data.npz`).

  Raises:
    DataError: naming the file (and the key): unreadable, not an .npz archive, a key missing,
      holding pickled objects, headers inconsistent or over the size limit, or an unusable
      array.
  """
  file = Path(path).expanduser()
  where = os.fspath(file)
  try:
    with open(file, "rb") as f:
      magic = f.read(4)
  except FileNotFoundError:
    raise DataError(f"{where}: no such file (given as {name})") from None
  except IsADirectoryError:
    raise DataError(f"{where}: a directory, not an .npz file (given as {name})") from None
  except OSError as e:
    raise DataError(f"{where}: cannot read ({e.strerror or _one_line(e)})") from None
  if not magic.startswith(b"PK"):
    raise DataError(f"{where}: not an .npz archive (no zip header); write it with np.savez")
  arrays = read_npz_arrays(file, where)
  return arrays_to_dataset(name, arrays, where, source=os.fspath(file.absolute()))


def _describe_loader(loader: Callable[[], Any]) -> str:
  qualname = getattr(loader, "__qualname__", type(loader).__qualname__)
  module = getattr(loader, "__module__", None)
  return f"{module}.{qualname}" if module else qualname


def load_registered(name: str, loader: Callable[[], Any]) -> Dataset:
  """Calls a loader given to `register_dataset` and makes its result a `Dataset` named `name`.

  Raises:
    DataError: the loader returned something else than a Dataset, the four arrays
      (x_train, y_train, x_test, y_test) or a dict with them, or unusable arrays.
  """
  source = f"registered loader {_describe_loader(loader)}"
  where = f"{name} ({source})"
  result = loader()
  if isinstance(result, Dataset):
    return result if result.name == name else dataclasses.replace(result, name=name)
  if isinstance(result, Mapping):
    return arrays_to_dataset(name, result, where, source=source)
  if isinstance(result, (tuple, list)) and len(result) == len(ARRAY_KEYS):
    return from_arrays(name, *result, source=source)
  raise DataError(f"{where} returned a value of type {type(result).__name__}; it must return "
                  f"a Dataset, (x_train, y_train, x_test, y_test) or a dict with those keys")
