"""Datasets for synthpart: uint8 images and int32 labels on the host.

    ds = load_dataset("fashion-mnist")            # finds local files, see `sources` for the order
    fit, val = split_validation(ds, 5000, seed=0)
    x = ds.flat().train_images                    # uint8 [N, H*W*C]

Arrays stay uint8 here; conversion to floats happens on the device.
"""

from __future__ import annotations

import os

from synthpart.data.dataset import Dataset, flatten_images, split_validation
from synthpart.data.registry import DEFAULT_DATASET, canonical_name, dataset_names, get_spec
from synthpart.data.sources import load_spec

__all__ = [
  "DEFAULT_DATASET",
  "Dataset",
  "canonical_name",
  "dataset_names",
  "flatten_images",
  "get_spec",
  "load_dataset",
  "split_validation",
]


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False,
                 progress: bool = True) -> Dataset:
  """Loads a dataset by name or TFDS alias.

  Args:
    name: a name from `dataset_names()` or an alias such as "emnist/letters" or "fashion_mnist".
    data_dir: a directory holding the files; when given, the only local place searched.
    download: fetch the published files (into `data_dir` or the cache) if none are found.
    progress: show a progress bar while downloading.

  Returns:
    The dataset: uint8 [N, H, W, C] upright images and int32 labels in 0..num_classes-1.
    Its arrays are read-only.

  Raises:
    DataError: unknown name, files missing, corrupt or inconsistent, or download failure.
  """
  return load_spec(get_spec(name), data_dir, download=download, progress=progress)
