"""User-facing errors: a loss that blows up, model.layers, damaged report inputs, code of the user's
that raises, a config.json that is no settings object. Each one line and exit 2 (3: diverged)."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthpart import cli, rundir
from synthpart import config as config_lib
from synthpart.config import TrainConfig
from synthpart.errors import CheckpointError, ConfigError, DataError, UserCodeError, call_user_code
from synthpart.model import build_network, network_shapes
from synthpart.records import LoopRecord
from synthpart.report.reading import check_directory
from synthpart.train import divergence
from synthpart.train.epoch import TrainState
from synthpart.train.loop import Loop, LoopSpec
from synthpart.train.objectives import Constants
from synthpart.train.problem import make_problem

from tiny import tiny_config, tiny_dataset

T = ["--dataset", "digits", "--hidden", "32,32", "--cuts", "1", "--epochs", "1",
     "--recovery-epochs", "0", "-q"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _one_error_line(err: str) -> str:
  assert "Traceback" not in err, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("synthpart: error: "), err
  return lines[0]


def _synthpart(*argv: str, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "synthpart", *argv], capture_output=True,
                        text=True, env=env or ENV, cwd=cwd, timeout=300)


# ---------------------------------------------------------------------------------------------
# A loss that blows up but stays finite


def test_the_blow_up_rule_at_its_edges():
  chance = math.log(10)
  limit = divergence.BLOWUP_FACTOR * chance
  assert divergence.blown_up(limit, 1, chance, 1.0) is None  # at the limit: not above it
  reason = divergence.blown_up(limit * 1.001, 1, chance, 1.0)
  assert reason and "epoch 1" in reason and "1000 times chance" in reason
  # A first step above the level raises the bar: a network that starts at a loss of 50 may sit
  # far above chance without having blown up.
  assert divergence.blown_up(limit * 2, 3, chance, 50.0) is None
  assert "first step" in divergence.blown_up(50.0 * divergence.BLOWUP_FACTOR * 1.01, 3, chance,
                                             50.0)
  # No level (one class) and no first step: nothing to judge by; a level of 0 or a first step
  # that is not finite is no reference.
  assert divergence.blown_up(1e30, 2, None, None) is None
  assert "first step" in divergence.blown_up(2e3, 2, 0.0, 1.0)
  assert divergence.blown_up(1e30, 2, None, math.inf) is None
  assert "predicting zeros" in divergence.blown_up(1e4, 1, 0.3, None,
                                                   "the loss of predicting zeros")


def test_the_loss_of_predicting_zeros():
  table = jnp.array([[1.0, 1.0], [3.0, 3.0]])
  labels = np.array([0, 1, 1])
  assert divergence.zero_prediction_loss(table, labels, "mse") == pytest.approx((1 + 2 * 9) / 3)
  assert divergence.zero_prediction_loss(table, labels, "l1") == pytest.approx((1 + 2 * 3) / 3)
  assert divergence.zero_prediction_loss(table, labels, "cosine") == pytest.approx(1.0)


def _loop(chance=None, zero_loss=None) -> Loop:
  spec = LoopSpec("pnn-parallel", "segment 1", None,
                       TrainConfig(learning_rate=1e-3, batch_size=32), jax.devices()[0])
  info = LoopRecord("segment 1", (0, 1), "x", "cpu:0", "adam", 1e-3, 32, 10, 4)
  return Loop(spec, info, lambda *a: None, TrainState({"w": jnp.ones(2)}, ()), {},
                   Constants(), jax.random.key(0), chance=chance, chance_epochs=5,
                   zero_loss=zero_loss)


def test_a_loop_whose_loss_blows_up_is_diverged_at_once():
  blown = _loop(chance=math.log(10))
  assert not blown.record_epoch(jnp.array([2.3, 1e4, 1e5]), 0.1)  # mean 3.7e4 in its first epoch
  assert blown.first_step_loss == pytest.approx(2.3)
  assert "over 1000 times chance" in blown.divergence
  # A healthy loop falls below its first step; one that rises a little is not blown up.
  healthy = _loop(chance=math.log(10))
  assert all(healthy.record_epoch(jnp.array(v), 0.1) for v in ([2.4, 1.0], [0.5, 0.4], [3.0, 3.1]))
  regression = _loop(zero_loss=0.33)
  assert regression.record_epoch(jnp.array([0.3, 0.2]), 0.1)
  assert not regression.record_epoch(jnp.array([5e2, 9e3]), 0.1)
  assert "over 1000 times the loss of predicting zeros (0.33)" in regression.divergence
  # Its first step above the loss of predicting zeros: the bar is that first step.
  started_high = _loop(zero_loss=0.33)
  assert started_high.record_epoch(jnp.array([1.5, 0.8]), 0.1)
  assert started_high.record_epoch(jnp.array([400.0]), 0.1)
  assert not started_high.record_epoch(jnp.array([2e3]), 0.1)
  assert "first step's loss (1.5)" in started_high.divergence


@pytest.mark.slow
def test_sgd_at_a_huge_step_size_is_diverged_and_a_healthy_run_is_not(tmp_path, capsys):
  blown, healthy = tmp_path / "blown", tmp_path / "healthy"
  assert cli.main(["train", *T, "--optimizer", "sgd", "--lr", "1e6", "--out", str(blown)]) == 3
  err = capsys.readouterr().err
  assert "diverged" in err and "over 1000 times" in err
  run, = json.loads((blown / "results.json").read_text())["runs"]
  assert run["status"] == "diverged" and run["test_accuracy"] is None
  first = run["segments"][0]
  assert first["diverged"] and "over 1000 times the loss of predicting zeros" in first["divergence"]
  assert all(math.isfinite(v) for v in first["loss_per_epoch"])  # finite, yet diverged
  assert cli.main(["train", *T, "--out", str(healthy)]) == 0
  run, = json.loads((healthy / "results.json").read_text())["runs"]
  assert run["status"] == "ok" and not any(s["diverged"] for s in run["segments"])


# ---------------------------------------------------------------------------------------------
# model.layers


@pytest.mark.parametrize("layers, words", [
    ("dense:width=-3", "model.layers[0] (dense:width=-3): width must be a whole number in 1.."),
    ("dense:width=1.5", "model.layers[0] (dense:width=1.5): width must be a whole number"),
    ("flatten,dense:width=abc", "model.layers[1] (dense:width=abc): width must be a whole"),
    ("dense", "model.layers[0] (dense): dense needs width"),
    ("conv:features=4:padding=same", "padding must be one of SAME, VALID, got 'same'"),
    ("pool:window=2:kind=min", "kind must be one of max, avg"),
    ("dense:width=4:activation=swish", "activation must be one of relu"),
    ("dense:width=4:width=5", "width is given twice"),
    ("layer_norm:eps=2", "model.layers[0] (layer_norm:eps=2): layer_norm has no option eps"),
])
def test_layer_options_are_one_line_naming_the_layer(layers, words):
  with pytest.raises(ConfigError) as e:
    config_lib.load(overrides={"model.layers": layers, "model.cuts": [1]})
  assert words in str(e.value) and "\n" not in str(e.value)


def test_layer_tables_are_checked_alike():
  with pytest.raises(ConfigError, match=r"model.layers\[0\] \(dense:width=1.5\): width must be"):
    config_lib.from_dict({"model": {"layers": [{"type": "dense", "width": 1.5}], "cuts": [1]}})


@pytest.mark.parametrize("layers, words", [
    ("pool:window=9,flatten", "model.layers[0] (pool:window=9): a max pool of window 9 shrinks "
     "its input [8, 8, 1] below 1x1; allowed: window at most 8"),
    ("pool:window=4,pool:window=4,flatten", "model.layers[1] (pool:window=4): a max pool of "
     "window 4 shrinks its input [2, 2, 1]"),
    ("conv:features=4:kernel=9:padding=VALID,flatten", "model.layers[0] (conv:features=4:"
     "kernel=9:padding=VALID): a conv of kernel 9 with VALID padding shrinks its input "
     "[8, 8, 1]"),
])
def test_a_layer_that_shrinks_the_map_below_one_pixel_names_itself(layers, words):
  with pytest.raises(ConfigError) as e:
    make_problem(tiny_config(**{"model.layers": layers, "model.cuts": [1]}),
                 tiny_dataset(shape=(8, 8, 1)))
  assert words in str(e.value)


_TYPES = ["dense", "conv", "pool", "flatten", "layer_norm", "dens", ""]
_KEYS = ["width", "features", "kernel", "stride", "window", "padding", "kind", "activation", "x",
         ""]
_VALUES = ["-3", "0", "1", "2", "3", "9", "1.5", "abc", "", "SAME", "VALID", "avg", "max",
           "relu", "linear", "2147483647", "2147483648", "1e3", " 4"]
_OPTION = st.tuples(st.sampled_from(_KEYS), st.sampled_from(_VALUES)).map("=".join)
_LAYER = st.tuples(st.sampled_from(_TYPES), st.lists(_OPTION, max_size=3)).map(
    lambda t: ":".join([t[0], *t[1]]))
_SPEC = st.one_of(st.lists(_LAYER, min_size=1, max_size=4).map(",".join),
                  st.text(alphabet=":=,.-0123456789abcdeflnoprstuwxSAMEVLID ", max_size=24))


@settings(max_examples=60, deadline=None)
@given(_SPEC)
def test_any_layer_spec_builds_or_is_a_config_error(spec):
  try:
    config = config_lib.load(overrides={"model.layers": spec, "model.cuts": [1]})
    network = build_network(config.model, (8, 8, 1), 4)
    shapes = network_shapes(network, (8, 8, 1))
  except ConfigError as e:
    assert str(e) and "\n" not in str(e)
    return
  assert all(size >= 1 for shape in shapes for size in shape)


# ---------------------------------------------------------------------------------------------
# `synthpart report` on damaged files


def _results() -> dict:
  """The smallest results document a report reads."""
  return {
      "schema": 1, "command": "train",
      "dataset": {"name": "tiny", "num_classes": 4, "num_train": 8, "num_test": 4,
                  "num_features": 16},
      "config": {"seed": 0, "model": {"hidden": [8], "cuts": [], "activation": "relu"},
                 "sil": {"kind": "uniform", "scale": 1.0, "loss": "mse", "noise": 0.5},
                 "train": {"optimizer": "adam", "learning_rate": 0.01, "batch_size": 4,
                           "epochs": 1},
                 "recovery": {"epochs": 0, "learning_rate": 0.001}},
      "runs": [{"method": "conventional", "test_accuracy": 0.5, "wall_seconds": 1.0,
                "compile_seconds": 1.0,
                "segments": [{"name": "network", "layers": [0, 2],
                              "objective": "inputs -> labels", "device": "cpu:0",
                              "optimizer": "adam", "epochs": 1, "batch_size": 4,
                              "steps_per_epoch": 2, "loss_per_epoch": [1.0],
                              "memory": {"peak": 10, "peak_without_data": 5}}],
                "curve": [{"epoch": 1, "seconds": 1.0, "examples": [8], "accuracy": 0.5}]}]}


def _sweep() -> dict:
  return {"schema": 1, "axes": [{"key": "sil.scale", "values": [1.0]}], "seeds": [0],
          "methods": "train",
          "points": [{"name": "sil.scale=1", "values": {"sil.scale": 1.0},
                      "runs": ["sil.scale=1/seed-0"], "baselines": []}]}


def _write(path: Path, document) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(document if isinstance(document, str) else json.dumps(document))


def _sweep_dir(directory: Path, sweep=None, results=None) -> Path:
  _write(directory / "sweep.json", _sweep() if sweep is None else sweep)
  _write(directory / "sil.scale=1" / "seed-0" / "results.json",
         _results() if results is None else results)
  return directory


def _budget_dir(directory: Path, budget=None) -> Path:
  _write(directory / "budget.json", budget or {
      "schema": 1, "fraction": 0.5, "seeds": [0], "grid_size": 1, "reference": "reference",
      "methods": ["conventional"]})
  _sweep_dir(directory / "reference")
  _sweep_dir(directory / "conventional")
  return directory


def _edit(document: dict, path: list, value=None, delete: bool = False) -> dict:
  document = copy.deepcopy(document)
  node = document
  for key in path[:-1]:
    node = node[key]
  if delete:
    del node[path[-1]]
  else:
    node[path[-1]] = value
  return document


DEEP = "[" * 100_000 + "]" * 100_000


def _damaged(tmp: Path, case: str) -> tuple[Path, str]:
  """A directory with one damaged file, and the words its one line must hold."""
  run = tmp / case
  if case == "accuracy-text":
    _write(run / "results.json", _edit(_results(), ["runs", 0, "test_accuracy"], "0.9"))
    return run, "results.json is not a synthpart results document: runs[0].test_accuracy must " \
                "be a number or null, got \"0.9\""
  if case == "deep-results":
    _write(run / "results.json", DEEP)
    return run, "results.json is nested too deeply"
  if case == "memory-text":
    _write(run / "results.json",
           _edit(_results(), ["runs", 0, "segments", 0, "memory", "peak"], "x"))
    return run, "runs[0].segments[0].memory.peak must be a whole number of bytes"
  if case == "sweep-without-points":
    return (_sweep_dir(run, _edit(_sweep(), ["points"], delete=True)),
            "sweep.json is not a synthpart sweep document: points is missing")
  if case == "sweep-point-lacks-axis":
    return (_sweep_dir(run, _edit(_sweep(), ["points", 0, "values"], {})),
            "points[0].values lacks the axis sil.scale")
  if case == "sweep-run-outside":
    return (_sweep_dir(run, _edit(_sweep(), ["points", 0, "runs", 0], "../../elsewhere")),
            "points[0].runs[0] must name a directory inside")
  if case == "sweep-run-damaged":
    return (_sweep_dir(run, results=_edit(_results(), ["runs", 0, "curve", 0, "accuracy"], "x")),
            "seed-0/results.json is not a synthpart results document: runs[0].curve[0].accuracy")
  if case == "deep-sweep":
    return _sweep_dir(run, DEEP), "sweep.json is nested too deeply"
  budget = {"schema": 1, "fraction": 0.5, "seeds": [0], "grid_size": 1,
            "reference": "reference", "methods": ["conventional"]}
  if case == "budget-without-reference":
    return (_budget_dir(run, _edit(budget, ["reference"], delete=True)),
            "budget.json is not a synthpart budget document: reference is missing")
  if case == "budget-fraction-text":
    return (_budget_dir(run, _edit(budget, ["fraction"], "half")),
            "fraction must be a number, got \"half\"")
  if case == "budget-without-conventional":
    return (_budget_dir(run, _edit(budget, ["methods"], ["sequential"])),
            "methods must include conventional")
  if case == "budget-is-a-list":
    return _budget_dir(run, "[1, 2]"), "the document must be a JSON object, got list"
  raise AssertionError(case)


CASES = ["accuracy-text", "deep-results", "memory-text", "sweep-without-points",
         "sweep-point-lacks-axis", "sweep-run-outside", "sweep-run-damaged", "deep-sweep",
         "budget-without-reference", "budget-fraction-text", "budget-without-conventional",
         "budget-is-a-list"]


def test_the_documents_of_these_cases_are_whole_before_the_damage(tmp_path):
  check_directory(_write(tmp_path / "run" / "results.json", _results()) or tmp_path / "run")
  check_directory(_sweep_dir(tmp_path / "sweep"))
  check_directory(_budget_dir(tmp_path / "budget"))


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_report_input_is_one_line_naming_the_file(tmp_path, capsys, case):
  directory, words = _damaged(tmp_path, case)
  with pytest.raises(DataError) as e:
    check_directory(directory)
  assert words in str(e.value) and str(tmp_path) in str(e.value)
  assert cli.main(["report", str(directory), "--no-memory"]) == 2
  assert words in _one_error_line(capsys.readouterr().err)
  assert not (directory / "report.md").exists()


def test_report_on_a_damaged_file_in_a_fresh_process(tmp_path):
  directory, words = _damaged(tmp_path, "accuracy-text")
  proc = _synthpart("report", str(directory))
  assert proc.returncode == 2 and words in _one_error_line(proc.stderr)


# ---------------------------------------------------------------------------------------------
# Code of the user's that raises


USER_CODE = textwrap.dedent("""
    def factory(input_shape, num_classes):
      raise ValueError("no network today")

    def failing_writer(run_dir, hparams):
      raise RuntimeError("cannot open the dashboard")

    class Late:
      def write_scalars(self, step, scalars):
        if step >= 2:
          raise OSError("the dashboard went away")

      def write_hparams(self, hparams):
        pass

      def flush(self):
        pass

      def close(self):
        raise RuntimeError("closing fails too")

    def late(run_dir, hparams):
      return Late()
""")


def test_call_user_code_names_the_function_and_the_exception():
  def boom():
    raise KeyError("k")

  with pytest.raises(UserCodeError, match=r"^pkg.mod:fn raised KeyError: 'k'$") as e:
    call_user_code("pkg.mod:fn", boom)
  assert isinstance(e.value.__cause__, KeyError)
  with pytest.raises(ConfigError, match="own"):  # synthpart's own errors pass as they are
    call_user_code("pkg.mod:fn", lambda: (_ for _ in ()).throw(ConfigError("own")))
  assert call_user_code("pkg.mod:fn", lambda x: x + 1, 1) == 2


def test_a_writer_factory_that_raises_is_one_line(tmp_path, monkeypatch, capsys):
  (tmp_path / "user_code_a.py").write_text(USER_CODE)
  monkeypatch.syspath_prepend(str(tmp_path))
  rc = cli.main(["train", *T, "--metrics-writer", "user_code_a:failing_writer",
                 "--out", str(tmp_path / "run")])
  line = _one_error_line(capsys.readouterr().err)
  assert rc == 2 and line == ("synthpart: error: --metrics-writer user_code_a:failing_writer "
                              "raised RuntimeError: cannot open the dashboard")
  sys.modules.pop("user_code_a", None)


def test_a_factory_that_raises_shows_its_traceback_under_debug(tmp_path, monkeypatch, capsys):
  (tmp_path / "user_code_b.py").write_text(USER_CODE)
  monkeypatch.syspath_prepend(str(tmp_path))
  args = ["train", *T, "--set", "model.factory=user_code_b:factory"]
  line = ("synthpart: error: model.factory user_code_b:factory raised ValueError: no network "
          "today")
  assert cli.main([*args, "--out", str(tmp_path / "a")]) == 2
  assert _one_error_line(capsys.readouterr().err) == line
  for debug, env in [(["--debug"], "0"), ([], "1")]:  # the flag, or the environment
    monkeypatch.setenv("SYNTHPART_DEBUG", env)
    assert cli.main([*debug, *args, "--out", str(tmp_path / f"b{env}")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "user_code_b.py" in err
    assert 'raise ValueError("no network today")' in err
    assert err.strip().splitlines()[-1] == line
  sys.modules.pop("user_code_b", None)


@pytest.mark.slow
def test_a_writer_failing_mid_run_keeps_what_is_done(tmp_path):
  (tmp_path / "user_code_c.py").write_text(USER_CODE)
  env = {**ENV, "PYTHONPATH": os.pathsep.join([str(tmp_path), ENV.get("PYTHONPATH", "")])}
  out = tmp_path / "run"
  proc = _synthpart("train", *T, "--epochs", "2", "--out", str(out), "--metrics-writer",
                    "user_code_c:late", env=env)
  # Round 2's scalars fail: one line naming the writer's method (its failing close is not what
  # is reported); the settings and round 1's checkpoint stay, for --resume to continue from.
  assert proc.returncode == 2
  assert _one_error_line(proc.stderr) == (
      "synthpart: error: --metrics-writer user_code_c:late write_scalars raised OSError: the "
      "dashboard went away")
  assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 2
  saved = out / "checkpoints" / "pnn-sequential" / "segment-0" / "1"
  assert saved.is_dir() and (saved / "meta").exists()


# ---------------------------------------------------------------------------------------------
# --resume with a config.json that is no settings object


@pytest.mark.parametrize("stored", ["[1, 2]", "3", "\"seed\"", "null"])
def test_resume_refuses_a_config_json_that_is_no_object(tmp_path, capsys, stored):
  out = tmp_path / "run"
  out.mkdir()
  (out / "config.json").write_text(stored)
  with pytest.raises(CheckpointError, match=r"config.json is not a settings object"):
    rundir.prepare_run_dir(out, {"seed": 0}, resume=True, overwrite=False, dry_run=True)
  assert cli.main(["train", *T, "--resume", "--out", str(out)]) == 2
  assert f"{out / 'config.json'} is not a settings object" in _one_error_line(
      capsys.readouterr().err)
  assert (out / "config.json").read_text() == stored
