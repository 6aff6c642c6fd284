"""Datasets for synthpart: images or feature vectors and int32 labels on the host.

    ds = load_dataset("fashion-mnist")            # finds local files, see `sources` for the order
    fit, val = split_validation(ds, 5000, seed=0)
    x = ds.flat().train_images                    # uint8 [N, H*W*C]

Arrays stay on the host as they are stored; conversion to floats happens on the device, where the
trainer divides by `ds.input_scale` (255 for uint8 pixels, 1 for float inputs).

Bring your own data, in any of three ways:

    ds = from_arrays("mine", x_train, y_train, x_test, y_test)    # num_classes = max label + 1

    np.savez("mine.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    ds = load_dataset("npz:mine.npz")             # also: synthpart train --dataset npz:mine.npz

    def load_mine():
      return x_train, y_train, x_test, y_test     # or a Dataset, or a dict with those keys
    register_dataset("mine", load_mine)
    ds = load_dataset("mine")                     # and data.name = "mine" in a config

Images are uint8 or float (float16/32/64, stored as float32) [N, H, W, C], or [N, F] feature
vectors; labels any integer dtype in 0..num_classes-1 (stored as int32). A registered name lives in
the process that registered it, so register before loading (in every process of a multi-process
run); `npz:` files need no registration.

`fingerprint(ds)` is the sha256 of a dataset's content; a run records it and never resumes on data
whose fingerprint differs (`synthpart.data.fingerprint`).
"""

from __future__ import annotations

import os

from synthpart.data.catalog import (
  DEFAULT_DATASET,
  REGISTRY,
  canonical_name,
  dataset_names,
  get_spec,
  npz_path,
  register_dataset,
  registered_loader,
)
from synthpart.data.dataset import (
  Dataset,
  flatten_images,
  from_arrays,
  split_validation,
)
from synthpart.data.fingerprint import check_fingerprint, fingerprint
from synthpart.data.sources import load_registered, load_spec, read_npz

__all__ = [
  "DEFAULT_DATASET",
  "Dataset",
  "canonical_name",
  "check_fingerprint",
  "dataset_names",
  "fingerprint",
  "flatten_images",
  "from_arrays",
  "get_spec",
  "load_dataset",
  "register_dataset",
  "split_validation",
]


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False,
                 progress: bool = True) -> Dataset:
  """Loads a dataset by name or TFDS alias, from an `npz:PATH` file, or from a registered loader.

  Args:
    name: a name from `dataset_names()`, an alias such as "emnist/letters" or "fashion_mnist", or
      "npz:PATH" for a .npz file holding x_train, y_train, x_test, y_test (optional num_classes).
    data_dir: a directory holding the files; when given, the only local place searched. Does not
      apply to npz: and registered names.
    download: fetch the published files (into `data_dir` or the cache) if none are found.
    progress: show a progress bar while downloading.

  Returns:
    The dataset: upright images [N, H, W, C] (uint8 for every built-in dataset) or feature
    vectors [N, F], and int32 labels in 0..num_classes-1. Its arrays are read-only.

  Raises:
    DataError: unknown name, files missing, corrupt or inconsistent, or download failure.
  """
  key = canonical_name(name)
  path = npz_path(key)
  if path is not None:
    return read_npz(path, key)
  loader = registered_loader(key)
  if loader is not None:
    return load_registered(key, loader)
  return load_spec(REGISTRY[key], data_dir, download=download, progress=progress)
