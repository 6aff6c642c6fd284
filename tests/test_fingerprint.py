"""The data's fingerprint: stable across loads, changed by any value, recorded by a run, and
checked by --resume (`synthpart.data.fingerprint`, `synthpart.rundir`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from synthpart import rundir
from synthpart.cli import main
from synthpart.data import fingerprint, from_arrays, load_dataset
from synthpart.errors import DataError

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
TINY = ["--hidden", "16,16", "--cuts", "1", "--epochs", "1", "--recovery-epochs", "0",
        "--batch-size", "16", "-q"]


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (64, 4, 4, 1), dtype=np.uint8)
  y = rng.integers(0, 3, 64)
  return dict(x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])


def test_fingerprint_is_stable_across_loads_and_follows_the_content(tmp_path):
  arrays = _arrays()
  np.savez(tmp_path / "a.npz", **arrays)
  np.savez_compressed(tmp_path / "moved.npz", **arrays)
  first = fingerprint(load_dataset(f"npz:{tmp_path / 'a.npz'}"))
  assert len(first) == 64 and int(first, 16) >= 0
  assert fingerprint(load_dataset(f"npz:{tmp_path / 'a.npz'}")) == first
  # Content only: another file, compressed, or the arrays handed over directly.
  assert fingerprint(load_dataset(f"npz:{tmp_path / 'moved.npz'}")) == first
  assert fingerprint(from_arrays("other", *arrays.values())) == first
  # Non-contiguous arrays hash as their contiguous copies.
  x_train = np.asfortranarray(arrays["x_train"])
  assert not x_train.flags.c_contiguous
  assert fingerprint(from_arrays("f", x_train, *list(arrays.values())[1:])) == first

  def changed(**change) -> str:
    return fingerprint(from_arrays("a", **{**arrays, **change}))

  one_label = arrays["y_test"].copy()
  one_label[3] = (one_label[3] + 1) % 3
  one_pixel = arrays["x_train"].copy()
  one_pixel[47, 3, 3, 0] ^= 1
  others = {changed(y_test=one_label), changed(x_train=one_pixel),
            changed(x_train=arrays["x_train"].reshape(48, 16),  # the same bytes, another shape
                    x_test=arrays["x_test"].reshape(16, 16)),
            changed(x_train=arrays["x_train"].astype(np.float32),
                    x_test=arrays["x_test"].astype(np.float32)),
            fingerprint(from_arrays("a", *arrays.values(), num_classes=4))}
  assert len(others) == 5 and first not in others
  assert fingerprint(load_dataset("digits")) == fingerprint(load_dataset("digits"))


def test_run_dir_records_the_fingerprint_and_resume_checks_it(tmp_path):
  config = {"seed": 0, "data": {"name": "npz:mine.npz"}}
  root = tmp_path / "run"
  rundir.prepare_run_dir(root, config, resume=False, overwrite=False, fingerprint="ab" * 32)
  assert json.loads((root / "config.json").read_text()) == {
      **config, rundir.DATA_FINGERPRINT: "ab" * 32}
  # Before the data are loaded (no fingerprint yet), the recorded one is no setting that differs.
  rundir.prepare_run_dir(root, config, resume=True, overwrite=False, dry_run=True)
  rundir.prepare_run_dir(root, config, resume=True, overwrite=False, fingerprint="ab" * 32)
  with pytest.raises(DataError) as info:
    rundir.prepare_run_dir(root, config, resume=True, overwrite=False, fingerprint="cd" * 32)
  assert str(info.value) == (
      f"--resume: the data differ from those recorded in {root / 'config.json'}: npz:mine.npz "
      "has fingerprint cdcdcdcdcdcd... now, abababababab... there; restore the data the run was "
      "trained on, or start a new run (--overwrite, or another --out)")
  # Settings are checked first, and say so.
  with pytest.raises(Exception, match="the settings differ from the run in .*: seed"):
    rundir.prepare_run_dir(root, {**config, "seed": 1}, resume=True, overwrite=False,
                           fingerprint="cd" * 32)


def test_a_run_dir_older_than_fingerprints_still_resumes(tmp_path):
  config = {"seed": 0, "data": {"name": "digits"}}
  root = tmp_path / "old"
  root.mkdir()
  (root / "config.json").write_text(json.dumps(config))
  rundir.prepare_run_dir(root, config, resume=True, overwrite=False, fingerprint="ef" * 32)
  assert json.loads((root / "config.json").read_text()) == config  # left as it was


@pytest.mark.slow
def test_resume_on_changed_npz_contents_is_refused(tmp_path, capsys):
  """Trained on one npz; its contents change; --resume stops on one line, changing nothing."""
  data = tmp_path / "mine.npz"
  np.savez(data, **_arrays())
  out = tmp_path / "run"
  flags = ["train", "--dataset", f"npz:{data}", *TINY, "--out", str(out)]
  assert main(flags) == 0
  capsys.readouterr()
  recorded = json.loads((out / "config.json").read_text())[rundir.DATA_FINGERPRINT]
  assert json.loads((out / "results.json").read_text())["dataset"]["fingerprint"] == recorded
  changed = _arrays()
  changed["y_train"] = (changed["y_train"] + 1) % 3
  np.savez(data, **changed)
  before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
  done = subprocess.run([sys.executable, "-m", "synthpart", *flags, "--resume"],
                        capture_output=True, text=True, env=ENV, timeout=300, check=False)
  assert done.returncode == 2, done.stderr
  now = fingerprint(load_dataset(f"npz:{data}"))
  assert done.stderr == (
      f"synthpart: error: --resume: the data differ from those recorded in {out}/config.json: "
      f"npz:{data} has fingerprint {now[:12]}... now, {recorded[:12]}... there; restore the data "
      "the run was trained on, or start a new run (--overwrite, or another --out)\n")
  assert {p: p.read_bytes() for p in out.rglob("*")
          if p.is_file() and p.name != ".lock"} == before
