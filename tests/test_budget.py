"""Budget searches: the file, t-intervals, paired reductions, a tiny search end to end, and one
killed and resumed."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synthpart import checkpoint
from synthpart.budget import analysis as A
from synthpart.budget import parse_budget, run_budget, t_interval, t_quantile
from synthpart.curves import crossing
from synthpart.errors import ConfigError
from synthpart.report import write_report
from synthpart.sweep import RunOptions

from tiny import tiny_dataset

BASE = {"model": {"hidden": [16, 16, 16], "cuts": [2]},
        "train": {"batch_size": 32, "learning_rate": 0.01, "epochs": 1},
        "recovery": {"epochs": 0}}
SET = {"data.validation_size": 64, "eval.every_steps": 2}


def _values(**extra):
  values = {"base": BASE, "seeds": [0], "fraction": 0.5, "set": SET,
            "reference": {"train.epochs": 2},
            "methods": {"conventional": {"axes": {"train.learning_rate": [0.01, 0.03]}},
                        "sequential": {"axes": {"segments.0.steps": [2, 4]}}}}
  values.update(extra)
  return values


@pytest.mark.parametrize("change,message", [
    ({"methods": {"conventional": {"axes": {"train.learning_rate": [0.01, 0.03]}},
                  "sequential": {"axes": {"segments.0.steps": [2, 4, 6]}}}}, "same size"),
    ({"methods": {"sequential": {}, "parallel": {}}}, "conventional"),
    ({"methods": {"conventional": {}, "sideways": {}}}, "unknown method"),
    ({"fraction": 1.5}, "fraction"),
    ({"target": 0.8}, "unknown budget key"),
    ({"methods": {"conventional": {"grid": {}}, "parallel": {}}}, "methods.conventional.grid"),
])
def test_budget_files_are_checked(change, message):
  with pytest.raises(ConfigError, match=message):
    parse_budget(_values(**change))


def test_a_budget_is_a_sweep_per_method_over_common_settings():
  budget = parse_budget(_values())
  assert budget.grid_size == 2 and budget.fraction == 0.5
  assert [name for name, _ in budget.sweeps] == ["reference", "conventional", "sequential"]
  assert budget.reference.base["train"]["epochs"] == 2
  assert budget.methods[1][1].base["eval"]["every_steps"] == 2


def test_t_quantiles_and_intervals():
  for p in (0.9, 0.975):
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-6)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-6)
  mean, low, high = t_interval([1.0, 2.0, 3.0])
  half = t_quantile(0.975, 2) * 1.0 / math.sqrt(3)
  assert (mean, low, high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
  assert t_interval([4.0])[1:] == (-math.inf, math.inf)


def _summary(name, flops_per_seed):
  crossings = [{"flops": f, "seconds": f / 10} for f in flops_per_seed]
  point = {"name": name, "seeds": [0, 1, 2], "crossings": crossings,
           "flops": {"mean": float(np.mean(flops_per_seed))},
           "seconds": {"mean": float(np.mean(flops_per_seed)) / 10}}
  return {"points": [point], "best": {"flops": name, "seconds": name}}


def test_reductions_pair_the_seeds():
  conventional = _summary("c", [100.0, 200.0, 400.0])
  method = _summary("m", [50.0, 150.0, 100.0])
  r = A.reduction(method, conventional, "flops")
  assert r["per_seed"] == {0: 0.5, 1: 0.25, 2: 0.75}
  assert (r["mean"], r["low"], r["high"]) == pytest.approx(t_interval([0.5, 0.25, 0.75]))
  assert r["of_means"] == pytest.approx(1 - 100 / (700 / 3))
  assert A.reduction({"points": [], "best": {"flops": None}}, conventional, "flops") is None


def test_a_tiny_budget_search_end_to_end(tmp_path):
  budget = parse_budget(_values())
  loads = []

  def load(data):
    loads.append(data.name)
    return tiny_dataset()

  analysis = run_budget(budget, tmp_path, RunOptions(show_progress=False), load=load)
  stored = json.loads((tmp_path / "budget.json").read_text())["analysis"]
  assert stored["reference"]["target"] == pytest.approx(analysis["reference"]["target"])
  reference = analysis["reference"]
  assert reference["target"] == pytest.approx(0.5 * np.mean(reference["accuracies"]))
  for method in ("conventional", "sequential"):
    summary = analysis["methods"][method]
    assert summary["runs"] == summary["expected_runs"] == 2
    for point in summary["points"]:
      assert point["reached"]
      if method == "sequential":  # read straight from its results: the same crossing
        (document,) = A.point_documents(tmp_path / method, {"runs": [f"{point['name']}/seed-0"]})
        want = crossing(A.run_curve(document, method), reference["target"])
        assert point["crossings"][0]["flops"] == pytest.approx(want["flops"])
    best = min(summary["points"], key=lambda p: p["flops"]["mean"])
    assert summary["best"]["flops"] == best["name"]
  reduction = analysis["reductions"]["sequential"]["flops"]
  seq = next(p for p in analysis["methods"]["sequential"]["points"]
             if p["name"] == reduction["point"])
  conv = next(p for p in analysis["methods"]["conventional"]["points"]
              if p["name"] == reduction["conventional_point"])
  assert reduction["of_means"] == pytest.approx(1 - seq["flops"]["mean"] / conv["flops"]["mean"])
  assert "Compute to target" in (tmp_path / "budget.md").read_text()
  report = write_report(tmp_path).read_text()
  assert "reduction vs conventional" in report
  assert (tmp_path / "figures" / "accuracy_vs_flops_fronts.png").exists()
  # Run again: every run is found done, nothing trains; the data are read once, to check that
  # they are those the runs recorded (their fingerprint).
  stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("results.json")}
  run_budget(budget, tmp_path, RunOptions(show_progress=False), load=load)
  assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("results.json")} == stamps
  assert len(stamps) == 5 and loads == ["digits", "digits"]
  # Another file into the same --out (another fraction; other learning rates) is refused before
  # anything is rewritten: budget.json and every sweep.json still describe the runs there.
  plans = {p: p.read_bytes() for p in [*tmp_path.rglob("sweep.json"), tmp_path / "budget.json"]}
  rates = _values(methods={**_values()["methods"],
                           "conventional": {"axes": {"train.learning_rate": [0.01, 0.1]}}})
  for values, culprit in (({"fraction": 0.6}, "budget.json"),
                          (rates, "conventional/sweep.json")):
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/{culprit} holds results of other "
                       r"settings than this budget search's \((fraction|axes, points)\b.*; use "
                       "another --out"):
      run_budget(parse_budget(_values(**values)), tmp_path, RunOptions(show_progress=False),
                 load=load)
  assert {p: p.read_bytes() for p in plans} == plans
  assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("results.json")} == stamps
  assert loads == ["digits", "digits"]


KILL_BUDGET = """
seeds = [0]
fraction = 0.5
[base.model]
hidden = [16, 16, 16]
cuts = [2]
[base.train]
batch_size = 64
learning_rate = 0.01
epochs = 1
[base.recovery]
epochs = 0
[set]
"data.validation_size" = 300
"eval.every_steps" = 4
[methods.conventional]
[methods.sequential]
"""


def _budget(path: Path, out: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop(checkpoint.CRASH_ENV, None)
  # A killed search goes through tests/faults.py, which dies at `crash_at`.
  command = ([str(Path(__file__).with_name("faults.py")), crash_at] if crash_at
             else ["-m", "synthpart"])
  return subprocess.run([sys.executable, *command, "budget", str(path), "--out", str(out), "-q",
                         "--compile-cache", "none"], capture_output=True, text=True, env=env,
                        timeout=600)


@pytest.mark.slow
def test_a_killed_budget_search_resumes_without_redoing_runs(tmp_path):
  path = tmp_path / "budget.toml"
  path.write_text(KILL_BUDGET)
  out = tmp_path / "out"
  killed = _budget(path, out, crash_at="steps-dispatched:pnn-sequential/segment 1:1:4")
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  finished = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
  assert sorted(p.parent.parent.parent.name for p in finished) == ["conventional", "reference"]
  assert not (out / "budget.md").exists()
  resumed = _budget(path, out)
  assert resumed.returncode == 0, resumed.stderr
  after = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
  assert len(after) == 3 and all(after[p] == stamp for p, stamp in finished.items())
  analysis = json.loads((out / "budget.json").read_text())["analysis"]
  assert set(analysis["methods"]) == {"conventional", "sequential"}
  assert "Compute to target" in resumed.stdout


def test_a_budget_base_that_is_a_directory_is_one_line(tmp_path):
  with pytest.raises(ConfigError, match=rf"^sweep base config {tmp_path} is a directory; give a "
                     r"file$"):
    parse_budget(_values(base="."), tmp_path)
