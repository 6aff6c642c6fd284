"""Multi-process runs: `synthpart launch` on local CPU processes, through jax.distributed."""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import ml_dtypes
import numpy as np
import pytest

from synthpart import distributed as D
from synthpart import rundir
from synthpart.cli import build_parser, main
from synthpart.data.idx import write_idx
from synthpart.distributed import coordinator, jaxkv, launcher, reports
from synthpart.distributed import launchdir as DR
from synthpart.errors import ConfigError, DataError
from synthpart.files import write_json_atomic
from synthpart.memory import tree_bytes
from synthpart.prepare import load_config, prepare_dataset, prepare_fingerprinted
from synthpart.progress import Progress
from synthpart.records import CurvePoint, LoopRecord
from synthpart.train import problem as P
from synthpart.train import schedules as S
from synthpart.train import segments
from synthpart.train.loop import start_loop

# Its module fixture is made once: every test of this file on one worker (pytest-xdist).
pytestmark = pytest.mark.xdist_group("distributed")


QUIET = Progress(quiet=True)
NUM_TRAIN = 384


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
  """A tiny dataset under MNIST's file names: learnable class patterns plus noise."""
  directory = tmp_path_factory.mktemp("mnist")
  rng = np.random.default_rng(0)
  prototypes = rng.integers(0, 256, (10, 28, 28))
  for split, n in (("train", NUM_TRAIN), ("t10k", 100)):
    labels = rng.integers(0, 10, n)
    images = np.clip(prototypes[labels] + rng.normal(0, 60, (n, 28, 28)), 0, 255)
    write_idx(directory / f"{split}-images-idx3-ubyte", images.astype(np.uint8))
    write_idx(directory / f"{split}-labels-idx1-ubyte", labels.astype(np.uint8))
  return directory


def _flags(data_dir, *extra):
  return ["--dataset", "mnist", "--data-dir", str(data_dir), "--hidden", "16,16,16",
          "--epochs", "2", "--batch-size", "64", "--lr", "0.01", "--recovery-epochs", "0",
          "--seed", "3", *extra]


def _launch(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "synthpart", "launch", *args],
                        capture_output=True, text=True, timeout=timeout, check=False)


def _reference(flags, devices=2):
  """The same settings trained by the single-process schedule: (params, method result)."""
  config = load_config(build_parser().parse_args(["train", *flags]))
  problem = P.make_problem(config, prepare_dataset(config, progress=False),
                           jax.devices()[:devices])
  train = S.TRAINERS[config.schedule]
  return train(problem, QUIET, track_accuracy=False)


def _assert_same_params(run_dir, reference_params):
  for k, expected in enumerate(reference_params):
    got = D.load_params(run_dir.params(k))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      assert np.array_equal(a, b), f"segment {k} differs"


# --- whole launches ----------------------------------------------------------------------------

@pytest.mark.slow  # several fresh processes each import jax and compile
def test_two_processes_match_one_process_bit_for_bit(mnist_dir, tmp_path):
  flags = _flags(mnist_dir, "--cuts", "2", "--schedule", "parallel")
  out = tmp_path / "run"
  done = _launch(*flags, "--local", "2", "--out", str(out))
  assert done.returncode == 0, done.stderr + done.stdout
  assert "pnn-parallel" in done.stdout and "process 1 (segments 1) sent 0 bytes" in done.stdout
  doc = json.loads((out / "results.json").read_text())
  params, reference = _reference(flags)
  _assert_same_params(D.RunDir(out, 2), params)
  (run,) = doc["runs"]
  assert run["method"] == "pnn-parallel" and run["transfers"] == []
  assert run["test_accuracy"] == reference.test_accuracy
  assert [s["loss_per_epoch"] for s in run["segments"]] == [
      list(s.loss_per_epoch) for s in reference.segments]
  # What each process sent: no activations in the parallel schedule, only its parameters.
  assert [p["bytes_sent"] for p in doc["processes"]] == [
      {"activations": 0, "parameters": tree_bytes(p), "total": tree_bytes(p)} for p in params]
  assert doc["command"] == "launch" and doc["schema"] == 1 and len(doc["devices"]) == 2
  assert {"dataset", "config", "versions", "backend"} <= set(doc)
  for i in range(2):
    assert json.loads((out / f"process-{i}" / "exit.json").read_text())["exit_code"] == 0


@pytest.mark.slow  # several fresh processes each import jax and compile
def test_three_processes_hand_over_activations_through_files(mnist_dir, tmp_path):
  # Segment 1 trains data-parallel on two devices of its own process.
  flags = _flags(mnist_dir, "--cuts", "1,2", "--schedule", "sequential", "--group-sizes", "1,2,1")
  out = tmp_path / "run"
  done = _launch(*flags, "--local", "3", "--out", str(out))
  assert done.returncode == 0, done.stderr + done.stdout
  doc = json.loads((out / "results.json").read_text())
  params, reference = _reference(flags, devices=4)
  _assert_same_params(D.RunDir(out, 3), params)
  (run,) = doc["runs"]
  assert run["test_accuracy"] == reference.test_accuracy
  assert run["segments"][1]["device"].count(",") == 1  # a group of two
  cut_bytes = [NUM_TRAIN * 16 * 4, NUM_TRAIN * 16 * 4, 0]
  assert [p["bytes_sent"]["activations"] for p in doc["processes"]] == cut_bytes
  assert [(t["what"], t["source"], t["bytes"]) for t in run["transfers"]] == [
      ("cut 1 activations", "process 0", cut_bytes[0]),
      ("cut 2 activations", "process 1", cut_bytes[1])]
  assert (out / "handoff" / "cut-1.npy").exists() and (out / "handoff" / "cut-2.npy").exists()


@pytest.mark.slow  # several fresh processes each import jax and compile
def test_a_killed_process_is_reported_and_its_segment_rerun_alone(mnist_dir, tmp_path):
  flags = _flags(mnist_dir, "--cuts", "2", "--schedule", "sequential")
  out = tmp_path / "run"
  launcher = subprocess.Popen(
      [sys.executable, "-m", "synthpart", "launch", *flags, "--local", "2", "--out", str(out)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  info = out / "process-1" / "process.json"
  deadline = time.monotonic() + 240
  while not info.exists() and launcher.poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
  os.kill(json.loads(info.read_text())["pid"], signal.SIGKILL)
  stdout, stderr = launcher.communicate(timeout=300)
  assert launcher.returncode == D.EXIT_INCOMPLETE, stdout + stderr
  assert "segment 1 (process 1) failed" in stderr and "SIGKILL" in stderr
  # The other process finished its segment and kept it, and its hand-off for segment 1.
  run = D.RunDir(out, 2)
  assert json.loads(run.status(0).read_text())["status"] == "done"
  assert run.params(0).exists() and run.handoff(2).exists() and not run.results.exists()
  failures = json.loads(run.failures.read_text())
  assert [(f["segment"], f["status"]) for f in failures["failed"]] == [(1, "failed")]
  assert failures["kept"] == [0]
  # The printed command reruns it alone (no coordinator) and assembles the network.
  command = next(line.split("rerun it alone: ", 1)[1] for line in stderr.splitlines()
                 if "rerun it alone: " in line)
  argv = shlex.split(command)
  assert argv[:2] == ["synthpart", "launch"] and argv[-2:] == ["--only-segment", "1"]
  assert "--process-id" in argv and argv[argv.index("--process-id") + 1] == "1"
  assert main(argv[1:] + ["-q"]) == 0
  doc = json.loads(run.results.read_text())
  params, reference = _reference(flags)
  _assert_same_params(run, params)
  assert doc["runs"][0]["test_accuracy"] == reference.test_accuracy


@pytest.mark.slow  # several fresh processes each import jax and compile
def test_a_killed_coordinator_is_named_as_the_cause(mnist_dir, tmp_path):
  flags = _flags(mnist_dir, "--cuts", "2", "--schedule", "sequential")
  out = tmp_path / "run"
  launcher = subprocess.Popen(
      [sys.executable, "-m", "synthpart", "launch", *flags, "--local", "2", "--out", str(out)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  # Both processes write process.json once process 0 said go, in either order.
  info = [out / f"process-{i}" / "process.json" for i in (0, 1)]
  deadline = time.monotonic() + 240
  while (not all(p.exists() for p in info) and launcher.poll() is None
         and time.monotonic() < deadline):
    time.sleep(0.02)
  os.kill(json.loads(info[0].read_text())["pid"], signal.SIGKILL)
  stdout, stderr = launcher.communicate(timeout=300)
  assert launcher.returncode == D.EXIT_INCOMPLETE, stdout + stderr
  cause = ("process 0 (the coordinator) died first: exit code -9, killed by SIGKILL; "
           "process 1 was aborted by the coordination service (exit code -6)")
  assert f"  {cause}\n" in stderr, stderr
  failures = json.loads(D.RunDir(out, 2).failures.read_text())
  assert failures["cause"] == cause and failures["exit_codes"] == {"0": -9, "1": -6}
  assert "segment 1 (process 1) failed: process 1 was aborted by the coordination service" in stderr


def test_the_order_of_deaths_tells_a_lost_coordinator():
  abort = reports.ABORT_CODE
  assert reports.coordinator_loss([(0, -9), (1, abort), (2, abort)]) == (
      "process 0 (the coordinator) died first: exit code -9, killed by SIGKILL; "
      "processes 1, 2 were aborted by the coordination service (exit code -6)")
  assert reports.aborted_by_coordinator([(0, -9), (2, 1), (1, abort)]) == [1]
  # A worker that died first is a failure of its own: process 0 then outlives it.
  assert reports.coordinator_loss([(1, -9), (0, 1)]) is None
  assert reports.aborted_by_coordinator([(1, abort), (0, -9)]) == []
  assert reports.coordinator_loss([(1, 0), (0, 1)]) == (
      "process 0 (the coordinator) died first: exit code 1")
  assert reports.coordinator_loss([(0, -9)]) is None  # one process: no coordinator


def test_the_key_value_store_is_where_the_adapter_looks():
  # jaxkv is the one use of a private JAX module: a jax that moves it fails here, saying what.
  assert jaxkv.missing() is None, f"{jaxkv.missing()}: update synthpart/distributed/jaxkv.py"
  script = ("import jax, sys; from synthpart.distributed import jaxkv; "
            "jax.distributed.initialize(sys.argv[1], 1, 0); jaxkv.put('k', 'v'); "
            "print(jaxkv.get('k', 10000)); jax.distributed.shutdown()")
  port = launcher.free_port()
  done = subprocess.run([sys.executable, "-c", script, f"127.0.0.1:{port}"], capture_output=True,
                        text=True, timeout=120, check=False)
  assert done.returncode == 0 and done.stdout.strip() == "v", done.stderr[-2000:]


def test_when_process_0_cannot_start_the_others_hear_why(tmp_path):
  out = tmp_path / "run"
  done = _launch(*_flags(tmp_path / "missing", "--cuts", "2"), "--local", "2", "--out", str(out))
  assert done.returncode == D.EXIT_INCOMPLETE
  assert "segment 0 (process 0) failed: process 0 died: exit code 2" in done.stderr
  assert "its last error: " in done.stderr and "missing" in done.stderr
  assert "process 0 stopped the launch" in (out / "process-1" / "log.txt").read_text()


# --- in one process: failures, reruns, settings ------------------------------------------------

def test_a_failing_segment_keeps_the_others_and_says_how_to_rerun(mnist_dir, tmp_path,
                                                                  monkeypatch, capsys):
  flags = _flags(mnist_dir, "--cuts", "2", "--schedule", "parallel", "-q")
  out = tmp_path / "run"
  real = start_loop

  def broken(spec, *args, **kwargs):
    if spec.task.spec.index == 1:
      raise RuntimeError("injected failure")
    return real(spec, *args, **kwargs)

  monkeypatch.setattr(segments, "start_loop", broken)
  assert main(["launch", *flags, "--num-processes", "1", "--out", str(out)]) == D.EXIT_INCOMPLETE
  run = D.RunDir(out, 1)
  status = json.loads(run.status(1).read_text())
  assert status["status"] == "failed" and status["error"] == "RuntimeError: injected failure"
  assert json.loads(run.status(0).read_text())["status"] == "done"
  (failed,) = json.loads(run.failures.read_text())["failed"]
  assert failed["segment"] == 1 and "--only-segment 1" in failed["rerun"]
  assert "RuntimeError: injected failure" in capsys.readouterr().err
  # A new launch into the same directory is refused; the rerun of segment 1 completes it.
  assert main(["launch", *flags, "--num-processes", "1", "--out", str(out)]) == 2
  assert "--overwrite" in capsys.readouterr().err
  monkeypatch.setattr(segments, "start_loop", real)
  assert main(["launch", *flags, "--out", str(out), "--only-segment", "1"]) == 0
  results = json.loads(run.results.read_text())
  assert results["runs"][0]["method"] == "pnn-parallel"
  assert not run.failures.exists()
  # The plan and the results record the data's fingerprint.
  config = load_config(build_parser().parse_args(["launch", *flags]))
  _, fingerprint = prepare_fingerprinted(config, progress=False)
  assert json.loads(run.plan.read_text())["data_fingerprint"] == fingerprint
  assert results["dataset"]["fingerprint"] == fingerprint


def test_a_rerun_on_other_data_is_refused_before_it_deletes_anything(mnist_dir, tmp_path,
                                                                     capsys):
  flags = _flags(mnist_dir, "--cuts", "2", "--schedule", "sequential", "-q")
  out = tmp_path / "run"
  config = load_config(build_parser().parse_args(["launch", *flags]))
  run = D.RunDir(out, 2)
  DR.write_plan(run, config, "0123456789abcdef" * 4)
  write_json_atomic(run.status(1), DR.status_record(1, 1, "failed", "earlier failure"))
  assert main(["launch", *flags, "--out", str(out), "--only-segment", "1"]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"synthpart: error: --only-segment: the data differ from those recorded "
                        f"in {run.plan}: mnist has fingerprint ") and err.count("\n") == 1
  assert "... now, 0123456789ab... there; give every process" in err
  assert json.loads(run.status(1).read_text())["error"] == "earlier failure"


def test_each_process_checks_its_data_against_the_plan(tmp_path):
  config = load_config(build_parser().parse_args(["launch"]))
  run = D.RunDir(tmp_path, 2)
  DR.check_data(run, config, "a" * 64, "process 1")  # no plan: nothing to check
  DR.write_plan(run, config)
  DR.check_data(run, config, "a" * 64, "process 1")  # a plan without a fingerprint: neither
  DR.write_plan(run, config, "a" * 64)
  DR.check_data(run, config, "a" * 64, "process 1")
  with pytest.raises(DataError, match=r"^process 1: the data differ from those recorded in "
                     r".*launch\.json: digits has fingerprint bbbbbbbbbbbb\.\.\. now, "
                     r"aaaaaaaaaaaa\.\.\. there"):
    DR.check_data(run, config, "b" * 64, "process 1")


def test_a_rerun_must_use_the_launch_settings(mnist_dir, tmp_path, capsys):
  flags = _flags(mnist_dir, "--cuts", "2", "--schedule", "sequential", "-q")
  out = tmp_path / "run"
  config = load_config(build_parser().parse_args(["launch", *flags]))
  write_json_atomic(out / "launch.json", {"num_processes": 2, "config": config.to_dict()})
  assert main(["launch", *flags, "--out", str(out), "--only-segment", "1", "--lr", "0.1"]) == 2
  assert "differ from those of the launch" in capsys.readouterr().err
  assert main(["launch", *flags, "--out", str(out), "--only-segment", "1",
               "--num-processes", "3"]) == 2
  assert "ran 2 processes, not 3" in capsys.readouterr().err


def test_without_coordinates_or_a_cluster_launch_says_what_it_needs(mnist_dir, tmp_path):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SYNTHPART_", "SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR"))}
  done = subprocess.run([sys.executable, "-m", "synthpart", "launch",
                         *_flags(mnist_dir, "--cuts", "2"), "--out", str(tmp_path)],
                        capture_output=True, text=True, timeout=120, env=env, check=False)
  assert done.returncode == 2
  assert "--coordinator HOST:PORT --num-processes N --process-id I" in done.stderr
  assert "--local N" in done.stderr and done.stderr.count("\n") == 1


def test_in_a_process_that_already_uses_jax_a_launch_says_so(mnist_dir, tmp_path, capsys):
  jax.devices()  # the backend is up, as it is in any program that has used jax
  before = jax.config.jax_enable_recoverability
  try:
    assert main(["launch", *_flags(mnist_dir, "--cuts", "2"), "--out", str(tmp_path),
                 "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "1"]) == 2
  finally:
    jax.config.update("jax_enable_recoverability", before)
  assert "must start in a fresh process" in capsys.readouterr().err


def test_a_segment_without_its_input_is_skipped(mnist_dir, tmp_path):
  flags = _flags(mnist_dir, "--cuts", "2", "--schedule", "sequential", "-q")
  out = tmp_path / "run"
  assert main(["launch", *flags, "--num-processes", "2", "--out", str(out),
               "--only-segment", "1"]) == D.EXIT_INCOMPLETE
  status = json.loads(D.RunDir(out, 2).status(1).read_text())
  assert status["status"] == "skipped" and "segment 0 is not trained" in status["error"]


@pytest.mark.parametrize("args,words", [
    (["--local", "3"], "give 1 to 2 processes"),
    (["--local", "2", "--process-id", "1"], "leave out --coordinator"),
    (["--num-processes", "2", "--process-id", "2"], "outside 0..2 - 1"),
    (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
    (["--num-processes", "1", "--only-segment", "5"], "outside segments 0..1"),
    (["--local", "2", "--only-segment", "1"], "leave out --local"),
    (["--num-processes", "2", "--process-id", "0", "--resume"], "does not --resume"),
    (["--local", "2", "--heartbeat-timeout", "nan"], "--heartbeat-timeout must be a positive"),
    (["--local", "2", "--heartbeat-timeout", "inf"], "--heartbeat-timeout must be a positive"),
    (["--num-processes", "1", "--heartbeat-timeout", "0"], "got 0.0"),
    (["--local", "2", "--coordinator-timeout", "-1"], "--coordinator-timeout must be a positive"),
])
def test_bad_launch_flags_are_one_line_errors(mnist_dir, tmp_path, capsys, args, words):
  assert main(["launch", *_flags(mnist_dir, "--cuts", "2"), "--out", str(tmp_path / "r"),
               *args]) == 2
  err = capsys.readouterr().err
  assert words in err and err.count("\n") == 1


def test_identity_from_flags_then_environment():
  args = build_parser().parse_args(["launch", "--process-id", "1"])
  env = {D.ENV_COORDINATOR: "10.0.0.1:1234", D.ENV_NUM_PROCESSES: "4", D.ENV_PROCESS_ID: "3"}
  assert D.resolve_identity(args, env) == D.Identity("10.0.0.1:1234", 4, 1)
  assert D.resolve_identity(build_parser().parse_args(["launch"]), {}) == D.Identity(None, None,
                                                                                   None)
  with pytest.raises(ConfigError, match="SYNTHPART_NUM_PROCESSES must be an integer"):
    D.resolve_identity(build_parser().parse_args(["launch"]), {D.ENV_NUM_PROCESSES: "two"})


def test_segments_go_round_robin():
  assert [D.segments_of(i, 2, 5) for i in range(2)] == [(0, 2, 4), (1, 3)]
  run = D.RunDir(__import__("pathlib").Path("/r"), 2)
  assert str(run.params(3)) == "/r/process-1/segment-3.npz"


def test_params_round_trip_exactly(tmp_path):
  params = [{"kernel": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
             "bias": np.ones(3, ml_dtypes.bfloat16) / 3}]
  nbytes = D.save_params(tmp_path / "p.npz", params)
  (layer,) = D.load_params(tmp_path / "p.npz")
  assert nbytes == 6 * 4 + 3 * 2
  assert np.array_equal(layer["kernel"], params[0]["kernel"])
  assert layer["bias"].dtype == ml_dtypes.bfloat16
  assert np.array_equal(layer["bias"], params[0]["bias"])


def test_liveness_by_heartbeat_and_exit(tmp_path):
  run = D.RunDir(tmp_path, 3)
  liveness = D.Liveness(run, timeout=0.2)
  run.process(1).mkdir(parents=True)
  run.heartbeat(1).write_text("7")
  assert liveness.lost(1) is None
  time.sleep(0.3)
  assert "no heartbeat for 0.2 s" in liveness.lost(1)
  with D.Heartbeat(run.heartbeat(2), interval=0.05):
    time.sleep(0.1)
    assert liveness.lost(2) is None
    time.sleep(0.3)
    assert liveness.lost(2) is None  # beating: its counter keeps changing
  write_json_atomic(run.exit_marker(2), {"exit_code": 0})
  assert liveness.lost(2) == "process 2 exited with code 0"


def test_a_failed_upstream_stops_the_wait(tmp_path):
  run = D.RunDir(tmp_path, 2)
  write_json_atomic(run.status(0), {"segment": 0, "status": "failed"})
  with pytest.raises(D.UpstreamMissing, match="segment 0 failed: no cut 2 activations"):
    D.wait_for_activations(run, 2, 0, D.Liveness(run, 60))
  write_json_atomic(run.status(0), {"segment": 0, "status": "done"})
  with pytest.raises(D.UpstreamMissing, match="segment 0 diverged"):
    D.wait_for_activations(run, 2, 0, D.Liveness(run, 60))


def test_curves_follow_the_schedule():
  def seg(seconds):
    return LoopRecord("s", (0, 1), "", "cpu:0", "adam", 0.1, 10, len(seconds), 2,
                      loss_per_epoch=(1.0,) * len(seconds), epoch_seconds=tuple(seconds))
  a, b = seg([1.0, 1.0]), seg([3.0])
  assert D.curve("parallel", [a, b], [0, 0]) == (
      CurvePoint(epoch=1, seconds=3.0, examples=(20, 20)),
      CurvePoint(epoch=2, seconds=3.0, examples=(40, 20)))
  assert [p.seconds for p in D.curve("sequential", [a, b], [0.0, 0.5])] == [1.0, 2.0, 5.5]


# --- one launch per directory, signals, the coordinator's port ---------------------------------

# A fresh CLI process that has imported everything and waits for a line on stdin to run: started
# early, it acts at once when told to, however slowly this machine imports jax.
_ARMED = ("import sys; from synthpart.cli import main; "
          "sys.exit(main(sys.argv[1:]) if sys.stdin.readline() == 'go\\n' else 9)")


def _armed(*argv):
  return subprocess.Popen([sys.executable, "-c", _ARMED, *argv], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def reaped():
  """A list for the processes a test starts: those still running at its end are stopped."""
  started = []
  yield started
  for p in started:
    if p.poll() is None:
      p.terminate()  # a launcher stops its own processes on SIGTERM
      try:
        p.wait(timeout=30)
      except subprocess.TimeoutExpired:
        p.kill()


def _fire(processes):
  for p in processes:
    p.stdin.write("go\n")
    p.stdin.flush()


def _await_file(path, process, seconds=240):
  deadline = time.monotonic() + seconds
  while not path.exists() and process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
  assert path.exists(), f"{path} never appeared"


def _files(root):
  return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
          if p.is_file()}


def _error_line(stderr):
  """The one line of a user error (jax's own log lines, from its C++ runtime, aside)."""
  lines = [line for line in stderr.splitlines()
           if not re.match(r"[IWE]\d{4} \d\d:\d\d:\d\d", line)]
  assert "Traceback" not in stderr and len(lines) == 1, stderr
  return lines[0]


@pytest.mark.slow  # a launch of two fresh processes
def test_sigterm_stops_a_local_launch_and_every_process_in_it(mnist_dir, tmp_path, reaped):
  out = tmp_path / "run"
  flags = _flags(mnist_dir, "--cuts", "2", "--schedule", "parallel", "--epochs", "100000", "-q")
  first = subprocess.Popen(
      [sys.executable, "-m", "synthpart", "launch", *flags, "--local", "2", "--out", str(out)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  reaped.append(first)
  for i in range(2):
    _await_file(out / f"process-{i}" / "process.json", first)
  pids = [json.loads((out / f"process-{i}" / "process.json").read_text())["pid"] for i in (0, 1)]
  first.send_signal(signal.SIGTERM)
  stdout, stderr = first.communicate(timeout=120)
  assert first.returncode == 128 + signal.SIGTERM, stdout + stderr
  assert stderr.count("\n") == 1 and "stopped by SIGTERM" in stderr, stderr
  for pid in pids:  # every process of the launch has ended: none goes on writing
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)
  before = _files(out)
  time.sleep(1.0)
  assert _files(out) == before
  run = D.RunDir(out, 2)
  failures = json.loads(run.failures.read_text())
  assert failures["signal"] == "SIGTERM" and failures["kept"] == []
  assert [f["segment"] for f in failures["failed"]] == [0, 1]
  assert all("--only-segment" in f["rerun"] for f in failures["failed"])
  for k in (0, 1):
    status = json.loads(run.status(k).read_text())
    assert status["error"] == "stopped: the launcher received SIGTERM"
  # The directory is free again: its lock went with the launcher.
  with rundir.lock_run_dir(out):
    pass


@pytest.mark.slow  # two launches of fresh processes
def test_a_second_launch_into_a_running_one_is_refused_before_it_writes(mnist_dir, tmp_path,
                                                                        reaped):
  out = tmp_path / "run"
  flags = _flags(mnist_dir, "--cuts", "2", "--schedule", "sequential", "--epochs", "20")
  # Into the running launch's directory, --overwrite even: with --local, and as process 0 of a
  # launch across hosts (which holds the lock there).
  second = [_armed("launch", *flags, "--out", str(out), "--overwrite", *how)
            for how in (["--local", "2"], ["--num-processes", "1", "--process-id", "0"])]
  first = subprocess.Popen(
      [sys.executable, "-m", "synthpart", "launch", *flags, "--local", "2", "--out", str(out)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  reaped.extend([*second, first])
  _await_file(out / "process-1" / "process.json", first)
  _fire(second)
  refusals = [p.communicate(timeout=120) for p in second]
  assert first.poll() is None, "the first launch ended before the second was refused"
  stdout, stderr = first.communicate(timeout=300)
  assert first.returncode == 0, stdout + stderr
  in_use = f"--out {out} is in use by another synthpart run (pid "
  assert [p.returncode for p in second] == [2, 2], refusals
  assert all(in_use + f"{first.pid})" in _error_line(err) for _, err in refusals)
  run = D.RunDir(out, 2)
  assert json.loads(run.results.read_text())["runs"][0]["method"] == "pnn-sequential"
  assert not run.failures.exists()
  for i in range(2):
    assert json.loads(run.exit_marker(i).read_text()) == {"exit_code": 0, "written_by": "process"}
  assert not (out / ".lock").exists()


@pytest.mark.slow  # two fresh processes
def test_a_coordinator_port_in_use_or_unreachable_ends_every_process_in_one_line(mnist_dir,
                                                                                  tmp_path):
  out = tmp_path / "run"
  flags = _flags(mnist_dir, "--cuts", "2")
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = f"127.0.0.1:{taken.getsockname()[1]}"
    cases = [(0, 120), (1, 120)]  # (process, --coordinator-timeout)
    start = time.monotonic()
    processes = [subprocess.Popen(
        [sys.executable, "-m", "synthpart", "launch", *flags, "--out", str(out),
         "--coordinator", busy, "--num-processes", "2", "--process-id", str(i),
         "--coordinator-timeout", str(timeout)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, timeout in cases]
    errors = [p.communicate(timeout=100)[1] for p in processes]
    seconds = time.monotonic() - start
  assert [p.returncode for p in processes] == [2, 2], errors
  assert all(e.count("\n") == 1 for e in errors), errors
  assert f"the coordinator port of {busy} is in use" in errors[0]
  assert f"something other than a launch's coordinator listens on {busy}" in errors[1]
  assert all("choose another port with --coordinator HOST:PORT" in e for e in errors)
  assert seconds < 90  # neither waited for its 120 s timeout
  assert not out.exists()  # nothing written
  # Where nothing listens, a process waits for the coordinator as long as it was told.
  free = f"127.0.0.1:{launcher.free_port()}"
  start = time.monotonic()
  with pytest.raises(ConfigError, match=f"no coordinator answered at {free} within 0.5 s: .*"
                                        "--coordinator-timeout"):
    coordinator.await_coordinator(free, 0.5)
  assert 0.5 <= time.monotonic() - start < 5


def test_a_listener_is_told_from_a_coordinator_by_its_answer(monkeypatch):
  def serve(sock, answer):
    connection, _ = sock.accept()
    with connection:
      connection.recv(64)
      connection.sendall(answer)
      time.sleep(0.5)

  settings = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
  for answer, error in ((settings, None), (b"HTTP/1.1 400 Bad\r\n\r\n", "another protocol")):
    with socket.socket() as sock:
      sock.bind(("127.0.0.1", 0))
      sock.listen()
      thread = threading.Thread(target=serve, args=(sock, answer), daemon=True)
      thread.start()
      address = f"127.0.0.1:{sock.getsockname()[1]}"
      if error is None:
        coordinator.await_coordinator(address, 5)
      else:
        with pytest.raises(ConfigError, match=error):
          coordinator.await_coordinator(address, 5)
      thread.join()
  with pytest.raises(ConfigError, match="a port in 1..65535"):
    coordinator.split_address("host:99999")
  assert coordinator.split_address("[::1]:80") == ("::1", 80)


def test_stop_signals_are_recorded_and_a_process_that_ignores_sigterm_is_killed():
  stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('ready', flush=True); time.sleep(60)")
  children = [subprocess.Popen([sys.executable, "-c", stubborn], stdout=subprocess.PIPE),
              subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])]
  children[0].stdout.readline()
  with launcher.stop_signals() as stop:
    os.kill(os.getpid(), signal.SIGHUP)  # recorded, not fatal
    time.sleep(0.1)
  assert stop.name == "SIGHUP"
  exits = []
  start = time.monotonic()
  launcher.stop_processes(children, exits, grace=1.0)
  assert time.monotonic() - start < 20
  assert sorted(exits) == [(0, -signal.SIGKILL), (1, -signal.SIGTERM)]
  children[0].stdout.close()


def test_a_launcher_pid_that_does_not_hold_the_lock_is_refused(tmp_path, monkeypatch):
  monkeypatch.setenv(D.ENV_LAUNCHER, str(os.getppid()))
  with pytest.raises(ConfigError, match="the lock names no one"):
    D.lock_launch_dir(tmp_path)
  monkeypatch.delenv(D.ENV_LAUNCHER)
  with D.lock_launch_dir(tmp_path) as lock:  # without it, the process takes the lock itself
    assert lock is not None and (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    monkeypatch.setenv(D.ENV_LAUNCHER, str(os.getppid()))
    with pytest.raises(ConfigError, match=f"the lock names {os.getpid()}"):
      D.lock_launch_dir(tmp_path)
