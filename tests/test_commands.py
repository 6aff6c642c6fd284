"""Every command of the CLI, run once as a user runs it: in a fresh process (`commands.synthpart`),
with a user's devices and global state, not pytest's. `train`, `launch`, `budget` and `export`
are run that way in their own test modules (test_resume, test_distributed, test_budget,
test_export); the `data` commands in tests/data/test_data_cli.py."""

from __future__ import annotations

import json

import pytest

from synthpart.data import fingerprint, load_dataset

from commands import synthpart

pytestmark = pytest.mark.slow

SMALL = ["--hidden", "32,32,32", "--cuts", "2", "--epochs", "4", "--batch-size", "32",
         "--lr", "0.01", "--recovery-epochs", "1", "-q"]


def test_version_and_a_missing_command():
  done = synthpart("--version")
  assert done.returncode == 0 and done.stdout.startswith("synthpart ")
  missing = synthpart()
  assert missing.returncode == 2 and "COMMAND" in missing.stderr


def test_compare_then_report(tmp_path):
  out = tmp_path / "run"
  done = synthpart("compare", *SMALL, "--out", str(out))
  assert done.returncode == 0, done.stderr
  doc = json.loads((out / "results.json").read_text())
  assert [r["method"] for r in doc["runs"]] == [
      "conventional", "pnn-sequential", "pnn-sequential+recovery", "pnn-parallel",
      "pnn-parallel-nearest-sil", "pnn-parallel+recovery", "pnn-pipelined",
      "pnn-pipelined+recovery"]
  for r in doc["runs"]:
    assert 0.5 < r["test_accuracy"] <= 1 and r["wall_seconds"] > 0
  assert doc["dataset"]["name"] == "digits" and doc["dataset"]["num_train"] == 1437
  assert doc["dataset"]["input_shape"] == [8, 8, 1] and doc["dataset"]["input_scale"] == 255.0
  assert doc["dataset"]["fingerprint"] == fingerprint(load_dataset("digits"))
  assert doc["config"]["model"]["hidden"] == [32, 32, 32] and doc["versions"]["jax"]
  # A user's process has one CPU device unless told otherwise: the segments got one each.
  assert {r["method"]: r["segments"][1]["device"] for r in doc["runs"]
          if r["method"] == "pnn-sequential"} == {"pnn-sequential": "cpu:1"}
  assert "pnn-parallel+recovery" in done.stdout and "test acc" in done.stdout
  report = synthpart("report", str(out))
  assert report.returncode == 0, report.stderr
  assert "pnn-pipelined" in (out / "report.md").read_text()
  assert (out / "figures").is_dir() and any((out / "figures").iterdir())


def test_sweep(tmp_path):
  path = tmp_path / "sweep.toml"
  path.write_text('seeds = [0]\nmethods = ["conventional", "parallel"]\n'
                  '[base.model]\nhidden = [8, 8, 8]\ncuts = [2]\n'
                  '[base.train]\nepochs = 1\nbatch_size = 64\nlearning_rate = 0.01\n'
                  '[base.recovery]\nepochs = 0\n[axes]\n"sil.scale" = [0.5, 2.0]\n')
  out = tmp_path / "sweep"
  done = synthpart("sweep", str(path), "--out", str(out), "-q")
  assert done.returncode == 0, done.stderr
  summary = json.loads((out / "summary.json").read_text())
  assert {(r["point"], r["method"]) for r in summary["rows"]} == {
      (p, m) for p in ("sil.scale=0.5", "sil.scale=2")
      for m in ("conventional", "pnn-parallel", "pnn-parallel-nearest-sil")}
  assert (out / "sil.scale=2/seed-0/results.json").exists()
  again = synthpart("sweep", str(path), "--out", str(out), "--dry-run")
  assert again.returncode == 0 and "done   sil.scale=2/seed-0" in again.stdout


def test_bench(tmp_path):
  out = tmp_path / "bench"
  done = synthpart("bench", "paper", "--width", "16", "--batch-size", "32", "--steps", "4",
                   "--repeats", "1", "--loops", "conventional,model-parallel",
                   "--no-memory-report", "--out", str(out))
  assert done.returncode == 0, done.stderr
  document = json.loads((out / "bench.json").read_text())
  assert document["suite"]["hidden"] == [16] * 5 and document["suite"]["batch_size"] == 32
  assert document["memory"] is None
  loops = {loop["loop"]: loop for loop in document["loops"]}
  assert list(loops) == ["conventional", "model-parallel"]
  for loop in loops.values():
    assert loop["samples_per_s"] > 0 and loop["tflops"] > 0 and loop["compile_seconds"] > 0
    assert loop["steps"] == 4
  assert loops["conventional"]["speedup_vs_conventional"] == 1.0
  assert loops["conventional"]["memory"]["compiled"]["data"] == 4 * 32 * (784 + 4)
  mp = loops["model-parallel"]
  assert mp["bytes_moved"] == mp["bytes_moved_expected"] == 4 * 2 * 32 * 16 * 4
  assert mp["devices"] == ["cpu:0", "cpu:1"]
  assert "| model-parallel | 0-6 |" in (out / "bench.md").read_text()
  assert "model-parallel moved" in done.stdout
