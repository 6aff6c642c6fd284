"""Checking a local copy of a dataset: checksums, counts, shapes and labels."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from synthpart.data import idx, sources
from synthpart.data.catalog import EMNIST_ZIP, DatasetSpec
from synthpart.data.dataset import Dataset
from synthpart.data.download import file_sha256
from synthpart.errors import DataError

OK = "ok"
FAIL = "FAIL"
WARN = "warn"
SKIP = "-"


@dataclasses.dataclass(frozen=True)
class Check:
  """One verification result: `status` is OK, FAIL, WARN or SKIP."""
  status: str
  what: str
  detail: str


def checksum_checks(spec: DatasetSpec, location: sources.Location) -> list[Check]:
  """Compares the files at `location` with the published sha256 (or content sha256) values.

  A gzipped IDX file that differs from the published archive may only be recompressed (Debian's
  are), so where the decompressed content's sha256 is known that decides; otherwise it is a
  warning, and the content checks that follow still apply.
  """
  published = {r.filename: r.sha256 for r in spec.remotes if r.sha256}
  if location.kind == sources.IDX_FILES:
    return [_idx_file_check(spec, role, path, published.get(path.name))
            for role, path in location.files.items()]
  if location.kind in (sources.EMNIST_ZIP, sources.CIFAR_TAR):
    name = location.path.name
    expected = EMNIST_ZIP.sha256 if location.kind == sources.EMNIST_ZIP else published.get(name)
    if expected is None:
      return [Check(SKIP, name, "no published sha256")]
    actual = file_sha256(location.path)
    if actual == expected:
      return [Check(OK, name, "sha256 matches the published archive")]
    return [Check(FAIL, name, f"sha256 {actual} differs from the published {expected}")]
  return [Check(SKIP, "checksums", f"none published for a {location.kind} copy")]


def _idx_file_check(spec: DatasetSpec, role: str, path: os.PathLike, expected: str | None) -> Check:
  name = os.path.basename(path)
  if expected is not None:
    actual = file_sha256(path)
    if actual == expected:
      return Check(OK, name, "sha256 matches the published file")
  content = spec.content_sha256.get(role)
  if content is not None:
    data = idx.read_bytes(path)
    if idx.is_gzip(data):
      data = idx.gunzip(data, os.fspath(path))
    if hashlib.sha256(data).hexdigest() == content:
      note = " (file recompressed)" if expected is not None else ""
      return Check(OK, name, f"decompressed sha256 matches the known data{note}")
    return Check(FAIL, name, "decompressed data differs from the known data")
  if expected is not None:
    return Check(WARN, name, "differs from the published file (recompressed?); content unknown")
  return Check(SKIP, name, "no published sha256 for this file")


def content_checks(spec: DatasetSpec, ds: Dataset) -> list[Check]:
  """Counts, shapes and label coverage of a loaded dataset against what `spec` publishes."""
  checks = []
  for split, expected, labels in (("train", spec.train_count, ds.train_labels),
                                  ("test", spec.test_count, ds.test_labels)):
    count = len(labels)
    status = OK if count == expected else FAIL
    checks.append(Check(status, f"{split} count", f"{count} (published: {expected})"))
  status = OK if ds.image_shape == spec.image_shape else FAIL
  shape = "x".join(map(str, ds.image_shape))
  checks.append(Check(status, "image shape", f"{shape} uint8 (published: "
                      f"{'x'.join(map(str, spec.image_shape))})"))
  for split, labels in (("train", ds.train_labels), ("test", ds.test_labels)):
    seen = np.unique(labels)
    status = OK if len(seen) == spec.num_classes else FAIL
    span = f"{seen.min()}..{seen.max()}" if len(seen) else "none"
    checks.append(Check(status, f"{split} labels",
                        f"{len(seen)} of {spec.num_classes} classes present, span {span}"))
  return checks


def verify(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> tuple[str, list[Check]]:
  """Verifies the copy of `spec` that `load_dataset` would use.

  Returns:
    (where the copy is, the checks in order). Problems reading the files are FAIL checks.

  Raises:
    DataError: no copy was found.
  """
  location = sources.locate(spec, data_dir)
  checks = checksum_checks(spec, location)
  try:
    ds = sources.read_location(spec, location)
  except DataError as e:
    return location.describe(), [*checks, Check(FAIL, "read", str(e))]
  return ds.source, [*checks, Check(OK, "read", "files parse; labels within range"),
                     *content_checks(spec, ds)]
