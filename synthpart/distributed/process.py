"""One process of a launch: who it is, joining the others through `jax.distributed`, training
its segments, and (process 0) checking the run directory first and assembling the network last.
Also the rerun of chosen segments alone (`--only-segment`), which needs no other process.

jax.distributed finds the processes (cluster auto-detection) and carries one start signal:
process 0 checks the run directory, then tells the others to go, or why not. It runs with
recoverability on, so one process's death does not take the others down; its coordinator lives
in process 0, which must outlive the others, so process 0 waits for their exit before its own.

Nothing is written into the run directory before process 0 holds its lock (or the `--local`
launcher that started it does) and has checked it; the others write nothing before its go. A
process 0 that stops the launch before the go waits until the others have heard why and left.

It is over 400 lines because a process's life is one sequence that reads best in one place:
identity, joining, the claim and the go, training, assembling, leaving, in that order.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import signal
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import jax

from synthpart.config import Config
from synthpart.data import Dataset
from synthpart.distributed import jaxkv
from synthpart.distributed.assemble import assemble
from synthpart.distributed.coordinator import (
  COORDINATOR_TIMEOUT,
  await_coordinator,
  check_port_free,
)
from synthpart.distributed.launchdir import (
  RunDir,
  Status,
  check_data,
  check_fresh,
  clear_run,
  error_text,
  lock_launch_dir,
  owner,
  read_json,
  same_settings,
  segments_of,
  write_plan,
)
from synthpart.distributed.liveness import (
  Heartbeat,
  Liveness,
  await_exits,
  wait_for_status,
)
from synthpart.distributed.reports import (
  EXIT_INCOMPLETE,
  child_arguments,
  failure_report,
  summary_lines,
)
from synthpart.distributed.segments import (
  Context,
  fail_segment,
  own_groups,
  run_segments,
)
from synthpart.errors import ConfigError
from synthpart.files import write_json_atomic
from synthpart.prepare import prepare_fingerprinted, select_devices
from synthpart.progress import Progress
from synthpart.rundir import RunLock
from synthpart.tblog import write_tensorboard
from synthpart.train.problem import Problem, make_problem

ENV_COORDINATOR = "SYNTHPART_COORDINATOR"
ENV_NUM_PROCESSES = "SYNTHPART_NUM_PROCESSES"
ENV_PROCESS_ID = "SYNTHPART_PROCESS_ID"
READY_KEY = "synthpart/ready"
HEARD_KEY = "synthpart/heard"  # + /<process>: that process has read process 0's word
LEAVE_SECONDS = 1.0  # for the others to leave jax.distributed once they heard a stop (ms, usually)
READY_TIMEOUT_MS = 60 * 60 * 1000  # process 0 may be downloading the dataset meanwhile


@dataclasses.dataclass(frozen=True)
class Identity:
  """Who this process is, from flags, then SYNTHPART_* variables; None: left to jax."""
  coordinator: str | None
  num_processes: int | None
  process_id: int | None


def _env_int(name: str, environ: Mapping[str, str]) -> int | None:
  value = environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"${name} must be an integer, got {value!r}") from None


def resolve_identity(args: argparse.Namespace,
                     environ: Mapping[str, str] | None = None) -> Identity:
  """This process's identity from its flags, else from $SYNTHPART_*; checked for range."""
  environ = dict(os.environ if environ is None else environ)
  identity = Identity(
      args.coordinator or environ.get(ENV_COORDINATOR) or None,
      args.num_processes if args.num_processes is not None
      else _env_int(ENV_NUM_PROCESSES, environ),
      args.process_id if args.process_id is not None else _env_int(ENV_PROCESS_ID, environ))
  if identity.num_processes is not None and identity.num_processes < 1:
    raise ConfigError(f"--num-processes must be at least 1, got {identity.num_processes}")
  pid, n = identity.process_id, identity.num_processes
  if pid is not None and (pid < 0 or (n is not None and pid >= n)):
    raise ConfigError(f"--process-id {pid} is outside 0..{'N' if n is None else n} - 1")
  if identity.coordinator is not None and ":" not in identity.coordinator:
    raise ConfigError(f"--coordinator must look like HOST:PORT, got {identity.coordinator!r}")
  return identity


def most_devices(sizes: Sequence[int], identity: Identity) -> int:
  """The devices this process may need before it knows which it is: those of its own segments,
  where its number is known, else the most any process of the launch needs."""
  n = identity.num_processes
  if n is None:
    return sum(sizes)
  candidates = range(n) if identity.process_id is None else (identity.process_id,)
  return max(sum(sizes[k] for k in segments_of(i, n, len(sizes))) for i in candidates)


def reserve_cpu_devices(count: int) -> bool:
  """Simulates `count` devices on CPU; must come before the backend starts (a no-op after, and
  on GPU and TPU). Returns whether the backend was still to start."""
  try:
    jax.config.update("jax_num_cpu_devices", max(count, 1))
  except RuntimeError:
    return False  # the backend is already up (an embedding program chose): use its devices
  return True


FRESH_PROCESS = ("a multi-process launch must start in a fresh process, before anything uses "
                 "jax; run `synthpart launch` from the command line")


def init_distributed(identity: Identity, timeout: float = COORDINATOR_TIMEOUT) -> tuple[int, int]:
  """jax.distributed.initialize with what is known (jax detects the rest on Slurm, Open MPI and
  TPU VMs); returns (process id, number of processes). Starts the backend.

  Where the coordinator's address is known, process 0 first checks that its port is free and
  every other process waits at most `timeout` seconds for the coordinator to answer, so that
  neither ends in a crash or an abort inside jax (`synthpart.distributed.coordinator`).
  """
  try:
    # Without it, the death of one process makes every other abort at its next contact.
    jax.config.update("jax_enable_recoverability", True)
  except (AttributeError, KeyError, ValueError):
    pass  # a jax without the option: a death then ends the others too
  deadline = time.monotonic() + timeout
  if identity.coordinator is not None and identity.process_id is not None:
    if identity.process_id == 0:
      check_port_free(identity.coordinator)
    else:
      await_coordinator(identity.coordinator, timeout)
  try:
    jax.distributed.initialize(
        identity.coordinator, identity.num_processes, identity.process_id,
        initialization_timeout=max(1, math.ceil(deadline - time.monotonic())))
  except RuntimeError as e:
    if "before any JAX calls" not in str(e):
      raise
    raise ConfigError(FRESH_PROCESS) from None
  except (ValueError, TypeError) as e:
    raise ConfigError(
        f"launch cannot tell which process this is ({e}); pass --coordinator HOST:PORT "
        f"--num-processes N --process-id I (or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, "
        f"${ENV_PROCESS_ID}), run under Slurm, Open MPI or on a TPU VM, or use --local N") from None
  # jax's preemption notifier takes SIGTERM over, and a process would train on; a launch
  # process ends on SIGTERM as any program does (its launcher records it; on a cluster, the
  # others see its heartbeat stop).
  with contextlib.suppress(ValueError):  # signals are the main thread's
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
  return jax.process_index(), jax.process_count()


def leave_distributed(liveness: Liveness, process_id: int, num_processes: int) -> None:
  """Leaves jax.distributed. Process 0 hosts its coordinator: a peer still connected when it
  leaves would abort, so process 0 first waits for every other process to exit."""
  if process_id == 0:
    await_exits(liveness, range(1, num_processes))
  with contextlib.suppress(Exception):  # leaving is best effort: the work is on disk already
    jax.distributed.shutdown()


def publish(error: str | None) -> None:
  """Process 0 tells the others to go, or why the launch stops."""
  jaxkv.put(READY_KEY, "error " + error if error else "go")


def await_go(process_id: int) -> None:
  """Waits for process 0's word, and says it was heard; where process 0 stopped the launch,
  leaves jax.distributed at once (before process 0, its coordinator, goes) and raises
  `ConfigError` with the reason."""
  answer = jaxkv.get(READY_KEY, READY_TIMEOUT_MS)
  jaxkv.put(f"{HEARD_KEY}/{process_id}", "1")
  if answer != "go":
    with contextlib.suppress(Exception):
      jax.distributed.shutdown()
    raise ConfigError(f"process 0 stopped the launch: {answer.removeprefix('error ')}")


def await_heard(num_processes: int, timeout: float) -> None:
  """Process 0, having stopped the launch: waits (at most `timeout` seconds in all) until every
  other process has heard why, and `LEAVE_SECONDS` more for them to leave jax.distributed, then
  leaves it too: a process still connected when the coordinator goes would abort."""
  deadline = time.monotonic() + timeout
  with contextlib.suppress(Exception):  # a process that never comes: leave all the same
    for i in range(1, num_processes):
      jaxkv.get(f"{HEARD_KEY}/{i}", max(1, int(1000 * (deadline - time.monotonic()))))
    time.sleep(LEAVE_SECONDS)
  with contextlib.suppress(Exception):
    jax.distributed.shutdown()


def claim_run(run: RunDir, config: Config, overwrite: bool
              ) -> tuple[RunLock | None, Dataset, str]:
  """Process 0: takes the run directory's lock (unless the launcher that started this process
  holds it), checks that it holds no earlier launch, reads the dataset, clears the earlier launch
  (with `overwrite`) and writes the plan with the data's fingerprint. Nothing is written into the
  directory before the lock is held and the checks pass, and data that cannot be read clear
  nothing. Returns the lock, for the caller to hold until the end (None where the launcher holds
  it), the dataset and its fingerprint."""
  lock = lock_launch_dir(run.root)
  try:
    check_fresh(run, overwrite)
    dataset, fingerprint = prepare_fingerprinted(config, progress=False)
    if overwrite:
      clear_run(run)
    write_plan(run, config, fingerprint)
  except BaseException:
    if lock is not None:
      lock.release()
    raise
  return lock, dataset, fingerprint


@contextlib.contextmanager
def telling_the_others(num_processes: int, timeout: float) -> Iterator[None]:
  """Process 0, until the others may start: an error on the way is sent to them (they wait for
  word from process 0 before they touch the run directory, so whatever goes wrong, they hear
  it, and process 0 waits until they have), and the go once the block completes."""
  try:
    yield
  except Exception as e:
    if num_processes > 1:
      publish(error_text(e))
      await_heard(num_processes, timeout)
    raise
  if num_processes > 1:
    publish(None)


def train_own(ctx: Context, config: Config, dataset: Dataset | None,
              devices: Sequence[jax.Device], own: Sequence[int]
              ) -> tuple[Problem | None, dict[int, Status]]:
  """This process's segments `own` on its `devices`: (the problem, where it could be made, and
  each segment's status). A failure before any segment could start fails all of them alike:
  among them, data (read here where `dataset` is None) other than those the plan records."""
  sizes = config.placement.sizes(config.model.num_segments)
  outcomes: dict[int, Status] = {}
  problem = None
  try:
    if dataset is None:
      dataset, fingerprint = prepare_fingerprinted(config, progress=False)
      check_data(ctx.run, config, fingerprint, f"process {ctx.process_id}")
    problem = make_problem(config, dataset, devices, warn_shared=False)
    problem = dataclasses.replace(problem, groups=own_groups(devices, sizes, own))
    outcomes = run_segments(ctx, problem, own)
  except Exception as e:  # noqa: BLE001  (recorded in each segment's status)
    for k in own:
      if k not in outcomes:
        outcomes[k] = fail_segment(ctx, k, e)
  return problem, outcomes


def finish_run(ctx: Context, problem: Problem | None, statuses: dict[int, Status], source: str,
               base: Sequence[str], tensorboard: bool, fingerprint: str | None = None) -> bool:
  """Assembles and writes results.json (recording the data's `fingerprint`) if every segment is
  done; else writes failures.json.

  Returns whether the run is complete.
  """
  run = ctx.run
  if problem is not None and all(s["status"] == "done" for s in statuses.values()):
    _, document = assemble(problem, run, statuses, source, ctx.progress, fingerprint)
    write_json_atomic(run.results, document)
    run.failures.unlink(missing_ok=True)
    if tensorboard:
      write_tensorboard(document, run.root / "tensorboard")
    print("\n".join(summary_lines(document)))
    print(f"results: {run.results}")
    return True
  lines, document = failure_report(run, statuses, base)
  write_json_atomic(run.failures, document)
  ctx.log("the network is incomplete:\n" + "\n".join(lines))
  return False


def _progress(args: argparse.Namespace, run: RunDir, process_id: int) -> Progress:
  return Progress(quiet=args.quiet, log_path=run.process(process_id) / "progress.txt")


def run_process(args: argparse.Namespace, config: Config, out: Path, identity: Identity) -> int:
  """One process of a launch: its segments, then (process 0) the network. Returns its exit
  code, which it also writes to its exit marker, last.

  Nothing is written into the run directory before process 0 holds its lock and has checked it,
  and the other processes write nothing before they hear its go: a launch refused there leaves
  a launch running in the directory untouched.
  """
  num_segments = config.model.num_segments
  sizes = config.placement.sizes(num_segments)
  coordinated = identity.num_processes != 1
  fresh = reserve_cpu_devices(args.devices or most_devices(sizes, identity))
  if coordinated and not fresh:
    raise ConfigError(FRESH_PROCESS)  # before any wait for the coordinator
  pid, n = init_distributed(identity, args.coordinator_timeout) if coordinated else (0, 1)
  if n > num_segments:
    raise ConfigError(f"{n} processes for {num_segments} segments: a process would have "
                      "nothing to train (segment k trains in process k mod N)")
  run = RunDir(out, n)
  own = segments_of(pid, n, num_segments)
  lock: RunLock | None = None
  try:
    dataset, fingerprint = None, None
    if pid == 0:
      with telling_the_others(n, args.coordinator_timeout):
        lock, dataset, fingerprint = claim_run(run, config, args.overwrite)
        devices = select_devices(args.devices, sum(sizes[k] for k in own), local=True)
    else:
      await_go(pid)
      devices = select_devices(args.devices, sum(sizes[k] for k in own), local=True)
    return train_process(args, config, run, pid, own, devices, dataset, fingerprint,
                         coordinated)
  finally:
    if lock is not None:
      lock.release()  # after the exit marker: the directory is this launch's to the end


def train_process(args: argparse.Namespace, config: Config, run: RunDir, pid: int,
                  own: Sequence[int], devices: Sequence[jax.Device], dataset: Dataset | None,
                  fingerprint: str | None, coordinated: bool) -> int:
  """The part of `run_process` that writes: once the run directory is claimed (process 0) or
  process 0 said go (the others). Returns the exit code, also written to the exit marker."""
  num_segments = config.model.num_segments
  write_json_atomic(run.process(pid) / "process.json",
                    {"process": pid, "host": socket.gethostname(), "pid": os.getpid(),
                     "devices": [f"{d.platform}:{d.id}" for d in devices]})
  liveness = Liveness(run, args.heartbeat_timeout)
  ctx = Context(run, pid, liveness, _progress(args, run, pid))
  complete, own_ok = False, False
  try:
    with Heartbeat(run.heartbeat(pid)):
      problem, outcomes = train_own(ctx, config, dataset, devices, own)
      own_ok = all(s["status"] == "done" for s in outcomes.values())
      if pid == 0:
        statuses = {k: outcomes.get(k) or wait_for_status(run, k, liveness)
                    for k in range(num_segments)}
        complete = finish_run(ctx, problem, statuses, dataset.source if dataset is not None else "",
                              child_arguments(args, run.root), args.tensorboard, fingerprint)
  finally:
    if coordinated:
      leave_distributed(liveness, pid, run.num_processes)
    code = 0 if own_ok and (pid != 0 or complete) else EXIT_INCOMPLETE
    write_json_atomic(run.exit_marker(pid), {"exit_code": code, "written_by": "process"})
  return code


def run_only(args: argparse.Namespace, config: Config, out: Path, identity: Identity,
             only: tuple[int, ...]) -> int:
  """Trains the segments `only` alone, into an earlier launch's directory, holding its lock;
  then assembles the network if every segment is now done. Needs no coordinator and no other
  process."""
  lock = lock_launch_dir(out)
  try:
    return _run_only_locked(args, config, out, identity, only)
  finally:
    if lock is not None:
      lock.release()


def _run_only_locked(args: argparse.Namespace, config: Config, out: Path, identity: Identity,
                     only: tuple[int, ...]) -> int:
  plan = read_json(out / "launch.json")
  n = identity.num_processes or (plan or {}).get("num_processes")
  if not n:
    raise ConfigError(f"--only-segment needs --num-processes N (that of the launch in {out}), "
                      f"or {out / 'launch.json'}")
  if plan is not None and plan.get("num_processes") not in (None, n):
    raise ConfigError(f"the launch in {out} ran {plan['num_processes']} processes, not {n}")
  if plan is not None and not same_settings(config, plan):
    raise ConfigError(f"these settings differ from those of the launch in {out} "
                      f"({out / 'launch.json'}); rerun with the launch's own settings")
  run = RunDir(out, n)
  if run.results.exists() and not args.overwrite:
    raise ConfigError(f"--out {out} already holds results.json; pass --overwrite to replace it")
  pid = identity.process_id if identity.process_id is not None else owner(only[0], n)
  sizes = config.placement.sizes(config.model.num_segments)
  devices = select_devices(args.devices, sum(sizes[k] for k in only), local=True)
  ctx = Context(run, pid, None, _progress(args, run, pid))
  # The data first: segments trained on other data than the launch's are never mixed in.
  dataset, fingerprint = prepare_fingerprinted(config, progress=False)
  check_data(run, config, fingerprint, "--only-segment")
  for k in only:
    run.status(k).unlink(missing_ok=True)
  problem = make_problem(config, dataset, devices, warn_shared=False)
  problem = dataclasses.replace(problem, groups=own_groups(devices, sizes, only))
  outcomes = run_segments(ctx, problem, only)
  found = {k: outcomes.get(k) or read_json(run.status(k)) for k in range(len(problem.specs))}
  statuses = {k: s for k, s in found.items() if s is not None}
  missing = [k for k in found if k not in statuses or statuses[k]["status"] != "done"]
  if not missing:
    finish_run(ctx, problem, statuses, dataset.source, child_arguments(args, out),
               args.tensorboard, fingerprint)
  else:
    ctx.log(f"segments {', '.join(map(str, missing))} are not done yet: the network is "
            "assembled once every segment is")
  return 0 if all(outcomes[k]["status"] == "done" for k in only) else EXIT_INCOMPLETE
