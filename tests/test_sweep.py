"""Sweeps: grid expansion, point names, baselines, resumability and the mean ± std summary."""

from __future__ import annotations

import json
import math
import os
import re

import pytest

from synthpart import sweep as sweep_lib
from synthpart.data import fingerprint
from synthpart.errors import CheckpointError, ConfigError, DataError
from synthpart.sweep import run as sweep_run

from tiny import tiny_dataset

# Its module fixture is made once: every test of this file on one worker (pytest-xdist).
pytestmark = pytest.mark.xdist_group("sweep")


TINY_BASE = {"data": {"name": "tiny"}, "model": {"hidden": [8, 8, 8], "cuts": [2]},
             "train": {"epochs": 1, "batch_size": 64, "learning_rate": 0.01},
             "recovery": {"epochs": 0}}


def tiny_sweep(**changes) -> sweep_lib.Sweep:
  values = {"base": TINY_BASE, "seeds": [0, 1], "methods": ["conventional", "parallel"],
            "axes": {"sil.scale": [0.5, 2.0]}}
  values.update(changes)
  return sweep_lib.parse_sweep(values)


def run(sweep: sweep_lib.Sweep, out, **options) -> dict:
  return sweep_lib.run_sweep(sweep, out, sweep_lib.RunOptions(show_progress=False, **options),
                             load=lambda data: tiny_dataset(num_train=128, num_test=32))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """One tiny sweep, run once for every test that reads its outputs."""
  out = tmp_path_factory.mktemp("sweep")
  summary = run(tiny_sweep(), out, tensorboard=True)
  return out, summary


def test_grid_is_the_product_of_the_axes_first_axis_slowest():
  sweep = tiny_sweep(axes={"sil.scale": [0.1, 1.0, 10.0], "model.cuts": [[1], [2], [1, 2]]})
  points = sweep_lib.expand(sweep)
  assert len(points) == 9
  assert [p.values for p in points[:2]] == [
      (("sil.scale", 0.1), ("model.cuts", (1,))), (("sil.scale", 0.1), ("model.cuts", (2,)))]
  last = points[-1]
  assert [c.seed for c in last.configs] == [0, 1]
  assert last.configs[0].sil.scale == 10.0 and last.configs[0].model.cuts == (1, 2)
  assert last.configs[0].model.num_segments == 3


def test_point_names_are_deterministic_and_readable():
  sweep = tiny_sweep(axes={"sil.scale": [0.1, 10.0], "model.cuts": [[1, 2]],
                           "sil.kind": ["uniform"]})
  names = [p.name for p in sweep_lib.expand(sweep)]
  assert names == ["sil.scale=0.1,model.cuts=1+2,sil.kind=uniform",
                   "sil.scale=10,model.cuts=1+2,sil.kind=uniform"]
  assert names == [p.name for p in sweep_lib.expand(sweep)]
  long = [("model.hidden", tuple([1024] * 40))]
  name = sweep_lib.point_name(long)
  assert len(name) <= 120 and name == sweep_lib.point_name(long)
  assert sweep_lib.point_name([("segments.0.epochs", 5), ("sil.noise", 0.0)]) == \
      "segments.0.epochs=5,sil.noise=0"


def test_nested_tables_and_dotted_keys_mean_the_same_setting():
  dotted = tiny_sweep(axes={"sil.scale": [1.0, 2.0], "segments.0.epochs": [1, 2]})
  nested = tiny_sweep(axes={"sil": {"scale": [1.0, 2.0]}, "segments": {"0": {"epochs": [1, 2]}}})
  assert [p.configs for p in sweep_lib.expand(dotted)] == \
      [p.configs for p in sweep_lib.expand(nested)]
  config = sweep_lib.expand(dotted)[-1].configs[0]
  assert config.segment_train(0).epochs == 2 and config.segment_train(1).epochs == 1


def test_set_overrides_the_base_and_base_may_be_a_file(tmp_path):
  (tmp_path / "base.toml").write_text('[data]\nname = "tiny"\n[train]\nepochs = 4\n')
  (tmp_path / "sweep.toml").write_text(
      'base = "base.toml"\nseeds = [3, 4, 5]\n[set]\n"train.batch_size" = 16\n'
      '[axes]\n"recovery.epochs" = [0, 1]\n')
  sweep = sweep_lib.load_sweep(tmp_path / "sweep.toml")
  config = sweep_lib.expand(sweep)[1].configs[2]
  assert (config.train.epochs, config.train.batch_size, config.recovery.epochs, config.seed) == \
      (4, 16, 1, 5)
  assert sweep.methods == "compare"


@pytest.mark.parametrize("changes, message", [
    ({"axes": {"seed": [0, 1]}}, "seed cannot be an axis"),
    ({"axes": {"sil.scale": []}}, "non-empty list"),
    ({"axes": {"sil.scale": [1.0, 1.0]}}, "repeats"),
    ({"methods": ["sequential", "bogus"]}, "methods must be"),
    ({"seeds": [0, 0]}, "seeds must be"),
    ({"axes": {"model.cuts": [[1], [7]]}}, "sweep point model.cuts=7"),
    ({"axes": {"sil.nope": [1]}}, "unknown setting sil.nope"),
    ({"axes": {"model.hidden.0": [16]}}, "cannot set model.hidden.0: model.hidden is a list, "
     "not a table"),
    ({"axes": {"train.epochs.x": [1]}}, "cannot set train.epochs.x: train.epochs is 1, not a "
     "table"),
])
def test_bad_sweeps_raise_one_line_config_errors(changes, message):
  with pytest.raises(ConfigError, match=message) as error:
    sweep_lib.expand(tiny_sweep(**changes))
  assert "\n" not in str(error.value)


def test_unknown_top_level_key_is_rejected():
  with pytest.raises(ConfigError, match="unknown sweep key"):
    sweep_lib.parse_sweep({"base": {}, "axis": {}})


def test_conventional_runs_once_per_seed_for_points_that_cannot_change_it():
  sweep = tiny_sweep(axes={"sil.scale": [0.5, 2.0], "model.cuts": [[1], [2]]},
                     methods=["conventional", "sequential", "parallel"])
  jobs = sweep_lib.jobs(sweep, sweep_lib.expand(sweep))
  baselines = [j for j in jobs if j.kind == "baseline"]
  assert len(baselines) == 2 and len(jobs) == 2 + 4 * 2
  assert all(j.config.model.cuts == () for j in baselines)
  assert jobs[-1].schedules == ("sequential", "parallel")
  wider = tiny_sweep(axes={"model.hidden": [[8, 8, 8], [16, 16, 16]]})
  assert len([j for j in sweep_lib.jobs(wider, sweep_lib.expand(wider))
              if j.kind == "baseline"]) == 4  # a width changes the baseline


def test_mean_std_is_the_sample_std():
  mean, std = sweep_lib.mean_std([0.8, 0.9, 1.0])
  assert math.isclose(mean, 0.9) and math.isclose(std, 0.1)
  assert sweep_lib.mean_std([0.5]) == (0.5, 0.0)
  assert all(math.isnan(v) for v in sweep_lib.mean_std([]))


def test_sweep_writes_each_point_and_a_summary(finished):
  out, summary = finished
  assert (out / "sil.scale=0.5/seed-0/results.json").exists()
  assert (out / "sil.scale=2/seed-1/results.json").exists()
  document = json.loads((out / "sil.scale=2/seed-1/results.json").read_text())
  assert document["config"]["sil"]["scale"] == 2.0 and document["config"]["seed"] == 1
  assert [r["method"] for r in document["runs"]] == ["pnn-parallel", "pnn-parallel-nearest-sil"]
  rows = {(r["point"], r["method"]): r for r in summary["rows"]}
  assert set(rows) == {(p, m) for p in ("sil.scale=0.5", "sil.scale=2")
                       for m in ("conventional", "pnn-parallel", "pnn-parallel-nearest-sil")}
  row = rows["sil.scale=2", "pnn-parallel"]
  accuracies = [json.loads((out / f"sil.scale=2/seed-{s}/results.json").read_text())
                ["runs"][0]["test_accuracy"] for s in (0, 1)]
  assert row["seeds"] == 2
  assert math.isclose(row["accuracy_mean"], sum(accuracies) / 2)
  assert math.isclose(row["accuracy_std"], sweep_lib.mean_std(accuracies)[1])
  conventional = rows["sil.scale=2", "conventional"]
  assert math.isclose(row["delta_points"],
                      100 * (row["accuracy_mean"] - conventional["accuracy_mean"]))
  assert json.loads((out / "summary.json").read_text())["rows"] == json.loads(
      json.dumps(summary["rows"]))
  table = (out / "summary.md").read_text()
  assert "| 2 | pnn-parallel | 2 |" in table and " ± " in table


def test_rerun_skips_finished_runs_and_redoes_missing_ones(finished, monkeypatch):
  out, _ = finished
  made = []
  real = sweep_lib.job_experiment

  def counting(job):
    made.append(job.directory)
    return real(job)

  monkeypatch.setattr(sweep_run, "job_experiment", counting)
  stamp = os.stat(out / "sil.scale=0.5/seed-0/results.json").st_mtime_ns
  run(tiny_sweep(), out)
  assert made == []
  assert os.stat(out / "sil.scale=0.5/seed-0/results.json").st_mtime_ns == stamp
  (out / "sil.scale=2/seed-1/results.json").unlink()
  run(tiny_sweep(), out)
  assert made == ["sil.scale=2/seed-1"]
  # Results lacking a method the job trains are trained again, not reused as they are.
  path = out / "sil.scale=0.5/seed-1/results.json"
  document = json.loads(path.read_text())
  document["runs"] = [r for r in document["runs"] if r["method"] != "pnn-parallel"]
  path.write_text(json.dumps(document))
  run(tiny_sweep(), out)
  assert made == ["sil.scale=2/seed-1", "sil.scale=0.5/seed-1"]
  assert "pnn-parallel" in {r["method"] for r in json.loads(path.read_text())["runs"]}


def test_changed_settings_in_the_same_directory_are_refused(finished):
  """Another sweep file into the same --out is refused before sweep.json is rewritten; so are
  results of other settings where sweep.json is gone."""
  out, _ = finished
  plan = (out / "sweep.json").read_bytes()
  stamps = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
  changed = tiny_sweep(base={**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 2}})
  more = tiny_sweep(methods=["conventional", "sequential", "parallel"])
  wider = tiny_sweep(axes={"sil.scale": [0.5, 2.0, 4.0]})
  for other, keys in ((changed, "base"), (more, "methods"), (wider, "axes, points")):
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(out))}/sweep\.json holds results of "
                       rf"other settings than this sweep's \({keys}(, points)? differ\); use "
                       "another --out"):
      run(other, out)
    assert (out / "sweep.json").read_bytes() == plan
  hidden = out / "sweep.json.aside"
  (out / "sweep.json").rename(hidden)
  try:
    # Runs without their sweep.json: not known to be this sweep's, so not written over.
    with pytest.raises(CheckpointError, match=r"the directory of synthpart train or compare "
                       r"\(results\.json is in it\); synthpart sweep does not write over"):
      run(changed, out)
    assert not (out / "sweep.json").exists()
  finally:
    hidden.rename(out / "sweep.json")
  assert {p: p.stat().st_mtime_ns for p in out.rglob("results.json")} == stamps


def test_results_lacking_a_method_of_the_job_are_not_done(finished, tmp_path):
  out, _ = finished
  sweep = tiny_sweep()
  by_kind = {j.kind: j for j in reversed(sweep_lib.jobs(sweep, sweep_lib.expand(sweep)))}
  assert by_kind["schedules"].directory == "sil.scale=0.5/seed-0"
  assert sweep_lib.job_methods(by_kind["schedules"]) == ("pnn-parallel",)
  assert sweep_lib.job_methods(by_kind["baseline"]) == ("conventional",)
  config = by_kind["schedules"].config
  assert sweep_lib.job_methods(sweep_lib.Job("d", config, "train")) == ("pnn-sequential",)
  assert sweep_lib.job_methods(sweep_lib.Job("d", config, "compare")) == (
      "conventional", "pnn-sequential", "pnn-parallel", "pnn-pipelined")
  path = out / "sil.scale=0.5/seed-0/results.json"
  assert sweep_lib.is_done(path, config, methods=("pnn-parallel",))
  assert not sweep_lib.is_done(path, config, methods=("pnn-parallel", "pnn-sequential"))
  document = json.loads(path.read_text())
  document["runs"] = [r for r in document["runs"] if r["method"] != "pnn-parallel"]
  lacking = tmp_path / "results.json"
  lacking.write_text(json.dumps(document))
  assert not sweep_lib.is_done(lacking, config, methods=("pnn-parallel",))


def test_changed_data_in_the_same_directory_are_refused(finished, tmp_path):
  """Each run records its data's fingerprint; a rerun on other data stops before training."""
  out, _ = finished
  path = out / "sil.scale=0.5/seed-0/results.json"
  recorded = json.loads(path.read_text())["dataset"]["fingerprint"]
  assert recorded == fingerprint(tiny_dataset(num_train=128, num_test=32))
  stamp = os.stat(path).st_mtime_ns
  other = lambda data: tiny_dataset(num_train=128, num_test=32, seed=1)  # noqa: E731
  with pytest.raises(DataError, match=rf"^finished results cannot be reused: the data differ from "
                     rf"those recorded in {re.escape(str(out))}/.*results\.json: tiny has "
                     rf"fingerprint \w{{12}}\.\.\. now, {recorded[:12]}\.\.\. there; restore"):
    sweep_lib.run_sweep(tiny_sweep(), out, sweep_lib.RunOptions(show_progress=False), load=other)
  assert os.stat(path).st_mtime_ns == stamp
  # Results written before fingerprints existed are reused as they are.
  datasets = sweep_lib.Datasets(other)
  config = sweep_lib.expand(tiny_sweep())[0].configs[0]
  document = json.loads(path.read_text())
  del document["dataset"]["fingerprint"]
  older = tmp_path / "results.json"
  older.write_text(json.dumps(document))
  assert sweep_lib.is_done(older, config, datasets)


def test_cli_dry_run_lists_runs(finished, tmp_path, capsys):
  from synthpart.cli import main
  out, _ = finished
  path = tmp_path / "sweep.toml"
  path.write_text('seeds = [0, 1]\nmethods = ["conventional", "parallel"]\n'
                  '[base.data]\nname = "tiny"\n[base.model]\nhidden = [8, 8, 8]\ncuts = [2]\n'
                  '[base.train]\nepochs = 1\nbatch_size = 64\nlearning_rate = 0.01\n'
                  '[base.recovery]\nepochs = 0\n[axes]\n"sil.scale" = [0.5, 2.0, 4.0]\n')
  assert main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert "done   sil.scale=0.5/seed-1" in lines and "to do  sil.scale=4/seed-0" in lines
  assert lines[-1] == "3 points x 2 seeds: 8 runs"


def test_tensorboard_files_are_written_per_method(finished):
  out, _ = finished
  logs = out / "sil.scale=0.5/seed-0/tensorboard"
  assert sorted(p.name for p in logs.iterdir()) == ["pnn-parallel", "pnn-parallel-nearest-sil"]
  assert any(f.name.startswith("events.out.tfevents") for f in (logs / "pnn-parallel").iterdir())


@pytest.mark.slow
def test_a_baseline_of_a_sweep_with_placement_groups_is_rerun_as_done(tmp_path, monkeypatch):
  """The baseline trains the whole network on the first segment's group: its config says so
  (no per-segment groups for a network without cuts) and reads back equal, so a rerun skips it."""
  sweep = tiny_sweep(seeds=[0], methods=["conventional", "sequential"],
                     axes={"sil.scale": [0.5]}, set={"placement.groups": [1, 1]})
  baseline = next(j for j in sweep_lib.jobs(sweep, sweep_lib.expand(sweep)) if j.kind == "baseline")
  assert baseline.config.placement.groups == () and baseline.config.model.cuts == ()
  assert sweep_run.stored_config(baseline.config.to_dict()) == baseline.config
  wide = tiny_sweep(seeds=[0], set={"placement.groups": [2, 1]})
  wide_baseline = next(j for j in sweep_lib.jobs(wide, sweep_lib.expand(wide))
                       if j.kind == "baseline")
  assert wide_baseline.config.placement.devices_per_segment == 2
  run(sweep, tmp_path)
  made = []
  real = sweep_lib.job_experiment
  monkeypatch.setattr(sweep_run, "job_experiment", lambda job: made.append(job) or real(job))
  run(sweep, tmp_path)
  assert made == []


def _sweep_file(path, base=None):
  base_line = f'base = "{base}"\n' if base is not None else ""
  path.write_text(base_line + 'seeds = [0]\nmethods = ["conventional", "parallel"]\n'
                  '[set]\n"data.name" = "tiny"\n"model.hidden" = [8, 8, 8]\n"model.cuts" = [2]\n'
                  '"train.epochs" = 1\n"recovery.epochs" = 0\n')
  return path


def test_inputs_and_caches_that_are_not_files_or_directories_are_one_line(tmp_path, capsys,
                                                                          monkeypatch):
  """A directory where a TOML file goes, and a compile cache that cannot be a directory: one
  line naming the path (or XDG_CACHE_HOME), exit 2, before anything trains."""
  from synthpart.cli import main
  afile = tmp_path / "afile"
  afile.write_text("mine")
  good = _sweep_file(tmp_path / "good.toml")
  out = tmp_path / "out"
  cases = [
      (["sweep", str(_sweep_file(tmp_path / "dot.toml", ".")), "--out", str(out)],
       f"sweep base config {tmp_path} is a directory; give a file"),
      (["sweep", str(tmp_path), "--out", str(out)], f"sweep file {tmp_path} is a directory"),
      (["budget", str(tmp_path), "--out", str(out)], f"budget file {tmp_path} is a directory"),
      (["sweep", str(good), "--out", str(out), "--compile-cache", str(afile)],
       f"--compile-cache {afile} exists and is not a directory"),
      (["sweep", str(good), "--out", str(out), "--compile-cache", str(afile / "sub")],
       f"--compile-cache {afile}/sub cannot be created (Not a directory)"),
  ]
  for argv, words in cases:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
  monkeypatch.setenv("XDG_CACHE_HOME", str(afile))
  assert main(["sweep", str(good), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"XDG_CACHE_HOME={afile}: the compile cache" in err, err
  assert afile.read_text() == "mine" and not out.exists()
