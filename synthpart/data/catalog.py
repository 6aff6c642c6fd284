"""The datasets synthpart knows: names, class counts, label mapping, file layouts and downloads.

Each `DatasetSpec` says what a dataset's files look like (`layout`), how many classes and images it
has, how stored labels map to 0..num_classes-1 (`label_offset`), whether images are stored
transposed (EMNIST), its TFDS name and where to download it. Published checksums come from the
TFDS checksum registry (`tensorflow_datasets/url_checksums/*.txt`); a checksum that is not known
for certain is `None`, and then only the size is checked.

Besides the built-in datasets, a name may be `npz:PATH` (arrays in a `.npz` file) or a name given
to `register_dataset` (arrays from a Python function); neither has a `DatasetSpec`.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable, Mapping
from typing import Any

from synthpart.errors import DataError

# Layouts: how a dataset's files are laid out on disk.
IDX = "idx"            # MNIST-style IDX files under their original names
EMNIST = "emnist"      # NIST's gzip.zip, or the IDX files it holds
CIFAR10 = "cifar10"    # cifar-10-binary.tar.gz, fixed-size records
CIFAR100 = "cifar100"  # cifar-100-binary.tar.gz, fixed-size records
SKLEARN = "sklearn"    # bundled with scikit-learn

DEFAULT_DATASET = "digits"

NPZ_PREFIX = "npz:"  # "npz:PATH" names a .npz file holding x_train, y_train, x_test, y_test

ROLES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclasses.dataclass(frozen=True)
class Remote:
  """One published file: where to fetch it and what it must hash to."""
  filename: str
  urls: tuple[str, ...]
  size: int | None = None
  sha256: str | None = None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What synthpart knows about one dataset before reading it.

  Attributes:
    name: canonical synthpart name, e.g. "emnist-letters".
    num_classes: number of classes after label mapping.
    image_shape: (H, W, C) of one upright image.
    layout: one of IDX, EMNIST, CIFAR10, CIFAR100, SKLEARN.
    train_count: images in the official training split.
    test_count: images in the official test split.
    label_offset: subtracted from stored labels (EMNIST letters stores 1..26).
    transposed: images are stored with rows and columns swapped (EMNIST, including via TFDS).
    tfds_name: the TFDS name ("emnist/letters"), or None.
    dirnames: directory names searched under the cache and system roots, in order.
    remotes: published files, in download order.
    emnist_split: NIST's split name for EMNIST datasets.
    content_sha256: sha256 of each decompressed IDX file by role, where known; lets `verify`
      check copies that were recompressed (Debian's) and so differ from the published archives.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  layout: str
  train_count: int
  test_count: int
  label_offset: int = 0
  transposed: bool = False
  tfds_name: str | None = None
  dirnames: tuple[str, ...] = ()
  remotes: tuple[Remote, ...] = ()
  emnist_split: str | None = None
  content_sha256: Mapping[str, str] = dataclasses.field(default_factory=dict)

  @property
  def downloadable(self) -> bool:
    return bool(self.remotes)


def idx_filenames(spec: DatasetSpec) -> dict[str, str]:
  """The uncompressed IDX file name for each role (the `.gz` versions add that suffix)."""
  prefix = f"emnist-{spec.emnist_split}-" if spec.layout == EMNIST else ""
  stems = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "test-images-idx3-ubyte" if prefix else "t10k-images-idx3-ubyte",
    "test_labels": "test-labels-idx1-ubyte" if prefix else "t10k-labels-idx1-ubyte",
  }
  return {role: prefix + stem for role, stem in stems.items()}


_MNIST_URLS = (
  "https://ossci-datasets.s3.amazonaws.com/mnist/",
  "https://storage.googleapis.com/cvdf-datasets/mnist/",
  "http://yann.lecun.com/exdb/mnist/",
)
_FASHION_URLS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_EMNIST_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
_KRIZ = "https://www.cs.toronto.edu/~kriz/"


def _remote(filename: str, bases: tuple[str, ...], size: int, sha256: str) -> Remote:
  return Remote(filename, tuple(base + filename for base in bases), size, sha256)


_MNIST_REMOTES = (
  _remote("train-images-idx3-ubyte.gz", _MNIST_URLS, 9912422,
          "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
  _remote("train-labels-idx1-ubyte.gz", _MNIST_URLS, 28881,
          "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
  _remote("t10k-images-idx3-ubyte.gz", _MNIST_URLS, 1648877,
          "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
  _remote("t10k-labels-idx1-ubyte.gz", _MNIST_URLS, 4542,
          "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
)

_FASHION_REMOTES = (
  _remote("train-images-idx3-ubyte.gz", _FASHION_URLS, 26421880,
          "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
  _remote("train-labels-idx1-ubyte.gz", _FASHION_URLS, 29515,
          "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
  _remote("t10k-images-idx3-ubyte.gz", _FASHION_URLS, 4422102,
          "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
  _remote("t10k-labels-idx1-ubyte.gz", _FASHION_URLS, 5148,
          "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
)

# Measured on the decompressed files of Debian's dataset-fashion-mnist package (same data as the
# published archives, recompressed), so a recompressed copy can still be checked.
_FASHION_CONTENT = {
  "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
  "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
  "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
  "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

EMNIST_ZIP = Remote(
  "gzip.zip", (_EMNIST_URL,), 561753746,
  "fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e")

_CIFAR10_REMOTE = Remote(
  "cifar-10-binary.tar.gz", (_KRIZ + "cifar-10-binary.tar.gz",), 170052171,
  "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd")
_CIFAR100_REMOTE = Remote(
  "cifar-100-binary.tar.gz", (_KRIZ + "cifar-100-binary.tar.gz",), 168513733,
  "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec")

# (split, classes, train, test) as published with EMNIST (Cohen et al., 2017).
_EMNIST_SPLITS = (
  ("balanced", 47, 112800, 18800),
  ("byclass", 62, 697932, 116323),
  ("bymerge", 47, 697932, 116323),
  ("letters", 26, 124800, 20800),
  ("digits", 10, 240000, 40000),
  ("mnist", 10, 60000, 10000),
)


def _emnist_spec(split: str, classes: int, train: int, test: int) -> DatasetSpec:
  return DatasetSpec(
    name=f"emnist-{split}", num_classes=classes, image_shape=(28, 28, 1), layout=EMNIST,
    train_count=train, test_count=test, label_offset=1 if split == "letters" else 0,
    transposed=True, tfds_name=f"emnist/{split}",
    # All splits share one 562 MB zip, kept once under "emnist".
    dirnames=(f"emnist-{split}", "emnist"), remotes=(EMNIST_ZIP,), emnist_split=split)


def _build_registry() -> Mapping[str, DatasetSpec]:
  specs = [
    DatasetSpec("digits", 10, (8, 8, 1), SKLEARN, 1437, 360),
    DatasetSpec("mnist", 10, (28, 28, 1), IDX, 60000, 10000, tfds_name="mnist",
                dirnames=("mnist",), remotes=_MNIST_REMOTES),
    DatasetSpec("fashion-mnist", 10, (28, 28, 1), IDX, 60000, 10000, tfds_name="fashion_mnist",
                dirnames=("fashion-mnist", "fashion_mnist"), remotes=_FASHION_REMOTES,
                content_sha256=types.MappingProxyType(_FASHION_CONTENT)),
    *(_emnist_spec(*split) for split in _EMNIST_SPLITS),
    DatasetSpec("cifar10", 10, (32, 32, 3), CIFAR10, 50000, 10000, tfds_name="cifar10",
                dirnames=("cifar10", "cifar-10"), remotes=(_CIFAR10_REMOTE,)),
    DatasetSpec("cifar100", 100, (32, 32, 3), CIFAR100, 50000, 10000, tfds_name="cifar100",
                dirnames=("cifar100", "cifar-100"), remotes=(_CIFAR100_REMOTE,)),
  ]
  return types.MappingProxyType({spec.name: spec for spec in specs})


REGISTRY: Mapping[str, DatasetSpec] = _build_registry()

# Other spellings accepted for each name: TFDS names and underscores for dashes.
ALIASES: Mapping[str, str] = types.MappingProxyType({
  **{spec.tfds_name: spec.name for spec in REGISTRY.values() if spec.tfds_name},
  **{spec.name.replace("-", "_"): spec.name for spec in REGISTRY.values()},
  **{f"emnist_{split}": f"emnist-{split}" for split, *_ in _EMNIST_SPLITS},
  "cifar-10": "cifar10",
  "cifar-100": "cifar100",
})


# Datasets registered from Python: canonical name -> zero-argument loader.
_REGISTERED: dict[str, Callable[[], Any]] = {}

_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")


def dataset_names() -> list[str]:
  """Canonical names of all known datasets: built-in ones in registry order, then registered ones.

  `npz:PATH` names are accepted too but not listed.
  """
  return [*REGISTRY, *_REGISTERED]


def npz_path(name: str) -> str | None:
  """The PATH of an `npz:PATH` name (prefix in any case, PATH as given); None for other names.

  Raises:
    DataError: the name is `npz:` with no path.
  """
  stripped = name.strip()
  if stripped[:len(NPZ_PREFIX)].lower() != NPZ_PREFIX:
    return None
  path = stripped[len(NPZ_PREFIX):].strip()
  if not path:
    raise DataError(f"dataset {name!r} names no file; write npz:PATH, e.g. npz:data/mine.npz")
  return path


def register_dataset(name: str, loader: Callable[[], Any]) -> str:
  """Makes `name` loadable by `load_dataset` (and so usable as the config's `data.name`).

  Args:
    name: letters, digits, ".", "_" and "-", starting with a letter or digit; case is ignored.
      Built-in names and their aliases are refused; registering a name again replaces its loader.
    loader: called with no arguments by every `load_dataset(name)`; returns a `Dataset`, the
      tuple (x_train, y_train, x_test, y_test), or a dict with those keys and optionally
      "num_classes" (see `from_arrays`).

  Returns:
    The canonical (lower-case) name.

  Raises:
    DataError: a malformed or built-in name, or a loader that is not callable.
  """
  key = name.strip().lower() if isinstance(name, str) else None
  if key is None or not _NAME_PATTERN.fullmatch(key):
    raise DataError(f"cannot register dataset {name!r}: a name is letters, digits, '.', '_' "
                    f"and '-', starting with a letter or digit")
  if key in REGISTRY or key in ALIASES:
    raise DataError(f"cannot register dataset {name!r}: {canonical_name(key)} is built in; "
                    f"choose another name")
  if not callable(loader):
    raise DataError(f"cannot register dataset {name!r}: the loader must be a function of no "
                    f"arguments, got {type(loader).__name__}")
  _REGISTERED[key] = loader
  return key


def registered_loader(name: str) -> Callable[[], Any] | None:
  """The loader registered under a canonical name, or None."""
  return _REGISTERED.get(name)


def canonical_name(name: str) -> str:
  """Maps a name or alias ("emnist/letters", "fashion_mnist") to its canonical name.

  `npz:PATH` names map to "npz:" + PATH, keeping PATH as given; registered names to lower case.
  """
  if not isinstance(name, str):
    raise DataError(f"a dataset name must be a string, got {type(name).__name__}")
  path = npz_path(name)
  if path is not None:
    return NPZ_PREFIX + path
  key = name.strip().lower()
  if key in REGISTRY or key in _REGISTERED:
    return key
  if key in ALIASES:
    return ALIASES[key]
  raise DataError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}; "
                  f"or npz:PATH for arrays in a .npz file")


def get_spec(name: str) -> DatasetSpec:
  """The spec for a built-in name or alias.

  Raises:
    DataError: an unknown name, or an `npz:PATH` or registered name (those have no spec).
  """
  key = canonical_name(name)
  if key not in REGISTRY:
    raise DataError(f"{key}: not a built-in dataset, so it has no published files or facts to "
                    f"check; built-in: {', '.join(REGISTRY)}")
  return REGISTRY[key]
