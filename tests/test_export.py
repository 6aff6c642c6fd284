"""`synthpart export` and `synthpart.load_model`: one exported network, preprocessing included."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import synthpart
from synthpart import checkpoint, export, rundir
from synthpart.cli import main
from synthpart.data import load_dataset
from synthpart.errors import CheckpointError, DiskFullError
from synthpart.train import segments
from synthpart.train.objectives import Constants, preprocess_pixels
from synthpart.train.problem import make_problem

from tiny import tiny_config

# Its module fixture is made once: every test of this file on one worker (pytest-xdist).
pytestmark = pytest.mark.xdist_group("export")

# Two segments on two devices (cpu:0 and cpu:1 of pytest's four), every method.
FLAGS = ["--dataset", "digits", "--hidden", "16,16", "--cuts", "1", "--epochs", "1",
         "--recovery-epochs", "1", "-q"]
EXPORTABLE = ["conventional", "pnn-sequential", "pnn-sequential+recovery", "pnn-parallel",
              "pnn-parallel+recovery", "pnn-pipelined", "pnn-pipelined+recovery"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("run")
  assert main(["compare", *FLAGS, "--out", str(out)]) == 0
  return out


@pytest.fixture(scope="module")
def exported(digits_run, tmp_path_factory):
  out = tmp_path_factory.mktemp("exported") / "model"
  assert main(["export", str(digits_run), "--method", "pnn-sequential", "--out", str(out)]) == 0
  return out


def _accuracies(run):
  return {r["method"]: r["test_accuracy"]
          for r in json.loads((run / "results.json").read_text())["runs"]}


def _accuracy(model) -> float:
  ds = load_dataset("digits")
  return float(np.mean(np.argmax(np.asarray(model(ds.test_images)), -1) == ds.test_labels))


def _copy(run, tmp_path, name="run"):
  return shutil.copytree(run, tmp_path / name)


def _edit_results(run, edit):
  document = json.loads((run / "results.json").read_text())
  edit(document)
  (run / "results.json").write_text(json.dumps(document))


def _data_file(run, method, loop):
  """The largest array file of the loop's newest checkpoint."""
  d = run / "checkpoints" / method / loop
  step = max((p for p in d.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
  return max((step / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)


def _other_digest(run, method, loop):
  """Records another sha256 in the loop's newest checkpoint: its arrays no longer match the
  digest saved with them, as after a flipped byte that zstd does not notice."""
  d = run / "checkpoints" / method / loop
  step = max((p for p in d.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
  meta = step / "meta" / "metadata"
  document = json.loads(meta.read_text())
  document["digest"] = "0" * 64
  meta.write_text(json.dumps(document))


def _flip(path, fraction):
  raw = bytearray(path.read_bytes())
  raw[int(len(raw) * fraction)] ^= 0xFF
  path.write_bytes(bytes(raw))


@pytest.mark.slow
def test_every_method_exports_in_a_fresh_process_onto_its_one_device(digits_run, tmp_path):
  # The run's segment 1 trained on cpu:1; a fresh process given one device has cpu:0 alone.
  assert len(json.loads((digits_run / "results.json").read_text())["devices"]) == 2
  corrupt = _copy(digits_run, tmp_path, "corrupt")
  step = checkpoint.latest(checkpoint.Policy(corrupt), "conventional", "network")
  (arrays,) = (corrupt / "checkpoints" / "conventional" / "network" / str(step) / "state" /
               "d").iterdir()
  _flip(arrays, 0.0)
  models = tmp_path / "models"
  script = textwrap.dedent(f"""
      import gc, json, os, sys, time, warnings
      import jax, numpy as np
      import synthpart
      from synthpart.cli import main
      from synthpart.data import load_dataset
      # --resume on a zstd-corrupt checkpoint: one line each time, nothing else, even from the
      # reads orbax leaves running (they end at any time: the process waits for them).
      warnings.filterwarnings("ignore", "segments 0, 1 share device")  # --devices 1
      codes = [main(["compare", *{FLAGS!r}, "--devices", "1", "--out", {str(corrupt)!r},
                     "--resume"])]
      for _ in range(5):
        codes.append(main(["export", {str(corrupt)!r}, "--method", "conventional", "--out",
                           {str(tmp_path / "none")!r}]))
      time.sleep(0.5)
      gc.collect()
      assert codes == [2] * 6 and len(jax.devices()) == 1, codes
      ds = load_dataset("digits")
      found = {{}}
      for method in {EXPORTABLE!r}:
        out = os.path.join({str(models)!r}, method)
        assert main(["export", {str(digits_run)!r}, "--method", method, "--out", out]) == 0
        model = synthpart.load_model(out)
        assert model(ds.test_images[:7]).shape == (7, 10)
        assert model(ds.test_images[:0]).shape == (0, 10)
        logits = np.asarray(model(ds.test_images))
        found[method] = float(np.mean(np.argmax(logits, -1) == ds.test_labels))
      print(json.dumps(found), flush=True)
      # Killed once the new export is complete, before it replaces the old one.
      os.environ["SYNTHPART_CRASH_AT"] = "export-written"
      main(["export", {str(digits_run)!r}, "--method", "conventional", "--out",
            os.path.join({str(models)!r}, "pnn-sequential"), "--overwrite"])
  """)
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert done.returncode == -9, done.stderr[-3000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 6, done.stderr[-3000:]
  assert all(line.startswith(f"synthpart: error: checkpoint {corrupt}/checkpoints/conventional")
             and "corrupt or truncated: DATA_LOSS" in line for line in lines), lines
  found = json.loads(done.stdout.strip().splitlines()[-1])
  accuracies = _accuracies(digits_run)
  assert found == {m: accuracies[m] for m in EXPORTABLE}
  survivor = models / "pnn-sequential"
  assert sorted(p.name for p in survivor.iterdir()) == sorted(export.EXPORT_FILES)
  assert json.loads((survivor / "model.json").read_text())["method"] == "pnn-sequential"
  assert _accuracy(synthpart.load_model(survivor)) == accuracies["pnn-sequential"]


def test_export_replaces_only_an_export_and_only_once_the_new_one_is_whole(
    digits_run, exported, tmp_path, capsys, monkeypatch):
  run = str(digits_run)
  a_file = tmp_path / "notes.txt"
  a_file.write_text("mine")
  users = tmp_path / "users"
  users.mkdir()
  (users / "figure.png").write_text("mine")
  mine = shutil.copytree(exported, tmp_path / "mine")
  (mine / "notes.txt").write_text("mine")
  dangling = tmp_path / "link"
  dangling.symlink_to(tmp_path / "nowhere")
  cases = [(a_file, [], "not a directory"), (dangling, [], "symbolic link to"),
           (users, [], "not empty"),
           (users, ["--overwrite"], "holds no exported model"),
           (mine, [], "not empty"), (mine, ["--overwrite"], "not the export's (notes.txt)")]
  for out, flags, _ in cases:
    assert main(["export", run, "--method", "conventional", "--out", str(out), *flags]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == len(cases)
  for line, (out, _, words) in zip(err, cases):
    assert line.startswith(f"synthpart: error: --out {out}") and words in line, line
  assert a_file.read_text() == (users / "figure.png").read_text() == "mine"
  assert (mine / "notes.txt").read_text() == "mine" and (mine / "params").is_dir()

  # A re-export that fails half-way leaves the earlier export as it was, and nothing beside it.
  (mine / "notes.txt").unlink()
  def full(path, document):  # model.json, written last, after the new params
    raise DiskFullError(f"no space left on the device writing {path}")

  monkeypatch.setattr(export, "write_json_atomic", full)
  assert main(["export", run, "--method", "conventional", "--out", str(mine), "--overwrite"]) == 2
  assert "no space left" in capsys.readouterr().err
  assert json.loads((mine / "model.json").read_text())["method"] == "pnn-sequential"
  assert _accuracy(synthpart.load_model(mine)) == _accuracies(digits_run)["pnn-sequential"]
  monkeypatch.undo()
  assert main(["export", run, "--method", "conventional", "--out", str(mine), "--overwrite"]) == 0
  assert json.loads((mine / "model.json").read_text())["method"] == "conventional"
  assert _accuracy(synthpart.load_model(mine)) == _accuracies(digits_run)["conventional"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "mine", "notes.txt", "users"]


def test_a_run_in_use_or_a_parent_being_exported_into_is_refused(digits_run, tmp_path, capsys):
  out = tmp_path / "model"
  with rundir.claim(digits_run, "run"):  # a training writing into the run
    assert main(["export", str(digits_run), "--method", "conventional", "--out", str(out)]) == 2
  assert "is in use by another synthpart run" in capsys.readouterr().err
  with export._exporting_into(out):  # another export writing beside --out
    assert main(["export", str(digits_run), "--method", "conventional", "--out", str(out)]) == 2
  assert "another synthpart export is writing into" in capsys.readouterr().err
  assert sorted(p.name for p in tmp_path.iterdir()) == []
  assert not (digits_run / rundir.LOCK_FILE).exists()


def test_damaged_or_edited_runs_are_one_line_and_write_nothing(digits_run, tmp_path, capsys):
  def remove(key):
    return lambda d: d.pop(key)

  def dataset(key, value):
    return lambda d: d["dataset"].update({key: value})

  def model(key, value):
    return lambda d: d["config"]["model"].update({key: value})

  def diverged(d):
    d["runs"][1].update(status="diverged", divergence="loss nan at epoch 1")

  edits = [(remove("config"), "conventional", "no 'config' table"),
           (dataset("num_classes", 0), "conventional",
            "num_classes must be in 1..2147483647, got 0"),
           (dataset("input_shape", [8, 8, 2]), "conventional",
            "params.0.kernel is float32[64, 16], the network's float32[128, 16]"),
           (model("hidden", [16, 17]), "pnn-sequential", "does not hold the network"),
           (model("param_dtype", "bfloat16"), "pnn-parallel+recovery", "bfloat16"),
           (lambda d: None, "pnn-parallel-nearest-sil",
            "reference readout (the first segment of pnn-parallel"),
           (diverged, "pnn-sequential", "diverged (loss nan at epoch 1), so it has no trained"),
           (lambda d: None, "model-parallel", "is not in"),
           # another seed: the same shapes, but the checkpoints are not of these settings
           (lambda d: d["config"].update(seed=d["config"]["seed"] + 1), "pnn-sequential",
            "segment-0/1 was written by another run (other settings or data)")]
  expected = []
  for i, (edit, method, words) in enumerate(edits):
    run = _copy(digits_run, tmp_path, f"edited-{i}")
    _edit_results(run, edit)
    assert main(["export", str(run), "--method", method, "--out", str(tmp_path / "m")]) == 2
    expected.append(words)
  # Damaged checkpoints: a flipped byte zstd finds, one only the digest finds, files gone.
  zstd = _copy(digits_run, tmp_path, "zstd")
  _flip(_data_file(zstd, "conventional", "network"), 0.0)
  flipped = _copy(digits_run, tmp_path, "flipped")  # arrays that are not those saved
  _other_digest(flipped, "conventional", "network")
  gone = _copy(digits_run, tmp_path, "gone")
  shutil.rmtree(gone / "checkpoints" / "pnn-parallel" / "segment-1")
  for run, method, words in [(zstd, "conventional", "ZSTD_decompressStream() failed"),
                             (flipped, "conventional", "do not match the digest"),
                             (gone, "pnn-parallel", "no checkpoint of pnn-parallel/segment 1"),
                             (tmp_path, "conventional", "holds no results.json")]:
    assert main(["export", str(run), "--method", method, "--out", str(tmp_path / "m")]) == 2
    expected.append(words)
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == len(expected)
  for line, words in zip(err, expected):
    assert line.startswith("synthpart: error:") and words in line, (words, line)
  assert not (tmp_path / "m").exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_load_model_raises_its_own_error_for_damaged_files(exported, tmp_path):
  model = synthpart.load_model(exported)
  empty = model(np.zeros((0, 8, 8, 1), np.uint8))
  assert empty.shape == (0, 10) and empty.dtype == np.float32
  truncated = shutil.copytree(exported, tmp_path / "truncated")
  blob = (truncated / "model.jax").read_bytes()
  (truncated / "model.jax").write_bytes(blob[:len(blob) // 3])
  missing = shutil.copytree(exported, tmp_path / "missing")
  shutil.rmtree(missing / "params")
  flipped = shutil.copytree(exported, tmp_path / "flipped")  # params other than those saved
  meta = json.loads((flipped / "model.json").read_text())
  (flipped / "model.json").write_text(json.dumps({**meta, "params_digest": "0" * 64}))
  zstd = shutil.copytree(exported, tmp_path / "zstd")
  _flip(max((zstd / "params" / "ocdbt.process_0" / "d").iterdir(),
            key=lambda p: p.stat().st_size), 0.0)
  for directory, words in [(truncated, "model.jax is corrupt or truncated"),
                           (missing, "params is missing"), (flipped, "params is corrupt"),
                           (zstd, "corrupt or truncated"),
                           (tmp_path, "holds no exported model (model.json missing)")]:
    with pytest.raises(CheckpointError) as caught:
      synthpart.load_model(directory)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_float_inputs_are_not_divided_by_255(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(96, 5)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int64)  # numpy's default integer labels
  np.savez(tmp_path / "blobs.npz", x_train=x[:64], y_train=y[:64], x_test=x[64:], y_test=y[64:])
  ds = load_dataset(f"npz:{tmp_path / 'blobs.npz'}")
  assert ds.input_scale == 1.0 and load_dataset("digits").input_scale == 255.0
  problem = make_problem(tiny_config(**{"model.cuts": [1], "recovery.batch_size": 16}), ds)
  task = segments.segment_task(problem, problem.specs[0], "pixels")
  assert problem.input_scale == task.input_scale == 1.0
  np.testing.assert_array_equal(preprocess_pixels(x, Constants(), task.input_scale), x)
  out = tmp_path / "run"
  assert main(["train", "--dataset", f"npz:{tmp_path / 'blobs.npz'}", "--hidden", "8,8",
               "--cuts", "1", "--epochs", "2", "--batch-size", "16", "--set",
               "recovery.batch_size=16", "-q", "--out",
               str(out)]) == 0
  assert json.loads((out / "results.json").read_text())["dataset"]["input_scale"] == 1.0


def test_a_read_only_run_is_exported_without_its_claim(digits_run, tmp_path, capsys,
                                                       monkeypatch):
  # --out inside another command's directory (the run's own) is refused, nothing written
  before = sorted(p.name for p in digits_run.iterdir())
  assert main(["export", str(digits_run), "--method", "conventional",
               "--out", str(digits_run / "exported")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "lies inside" in err, err
  assert sorted(p.name for p in digits_run.iterdir()) == before
  real_access = os.access
  run = os.path.realpath(digits_run)

  def access(path, mode):  # as on a read-only file system, or another user's run
    return False if os.path.realpath(path) == run else real_access(path, mode)

  def claimed(*args, **kwargs):
    raise AssertionError("claimed the read-only run")

  monkeypatch.setattr("synthpart.export.os.access", access)
  monkeypatch.setattr("synthpart.export.claim", claimed)
  out = tmp_path / "model"
  assert main(["export", str(digits_run), "--method", "conventional", "--out", str(out)]) == 0
  assert (out / "model.json").is_file()
