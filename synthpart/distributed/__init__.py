"""Multi-process runs: one process per segment group, coordinated through `jax.distributed`.

  synthpart launch CONFIG --out DIR --coordinator HOST:PORT --num-processes N --process-id I
  synthpart launch CONFIG --out DIR            # Slurm, Open MPI, TPU VMs: jax finds the rest
  synthpart launch CONFIG --out DIR --local N  # N processes on this machine, for testing

Segment k trains in process k mod N, on that process's local devices (its segments' groups laid
out over them, see `synthpart.placement`), through the schedules' own loops, so that a launch trains
exactly as `synthpart train` does. The processes share nothing but the run directory, which must
be on storage that every process sees (NFS, Lustre, a bucket mounted with FUSE...).

Why files and not collectives: the parallel schedule exchanges nothing until the end, and the
sequential one hands over one array per cut, once. A file written atomically and polled for by
the next process is the simplest transport that survives the failure of either side; it works
across hosts without cross-process device collectives (which need every process to take part,
and gloo on CPU), and it leaves the cut activations on disk, so a failed segment can be rerun
alone from them. jax.distributed finds the processes (cluster auto-detection), and its key-value
store carries one start signal. Process 0 records the fingerprint of the data it read in the plan
(`synthpart.data.fingerprint`); every other process, and a rerun of chosen segments, refuses data
whose fingerprint differs, so no network is assembled from segments trained on different data.

A failure stays in its process: every segment's status is written whatever happens, the other
processes finish their segments and keep them, and the report names each failed segment and the
command that reruns it alone (`--only-segment K`, which needs no coordinator). The one exception
is process 0, which hosts jax's coordination service: when it dies, the service aborts every
process still connected, so process 0 waits for the others' exit before its own.

The modules, each importing only those above it:

  rundir     paths of the run directory, its lock, plan, statuses, parameter and hand-off files
  coordinator  before jax.distributed: process 0's port is free, the others reach it in time
  liveness   heartbeats, exit markers, and waiting for what another process writes
  jaxkv      the key-value store of jax.distributed (the one private JAX API, isolated)
  reports    exit codes, the failure report with its cause and rerun commands, the summary
  segments   training one process's segments through the schedules' loops
  assemble   the network from every segment's files, and its results document
  process    one process of a launch, and the rerun of chosen segments alone
  launcher   --local: starting the processes, watching their exits, reporting
  command    the `launch` subcommand: flags, checks, dispatch
"""

from __future__ import annotations

from synthpart.distributed.assemble import curve
from synthpart.distributed.command import add_launch_command, run_launch
from synthpart.distributed.launchdir import (
  ENV_LAUNCHER,
  RunDir,
  load_params,
  lock_launch_dir,
  save_params,
  segments_of,
)
from synthpart.distributed.liveness import (
  Heartbeat,
  Liveness,
  UpstreamMissing,
  wait_for_activations,
  wait_for_status,
)
from synthpart.distributed.process import (
  ENV_COORDINATOR,
  ENV_NUM_PROCESSES,
  ENV_PROCESS_ID,
  Identity,
  resolve_identity,
)
from synthpart.distributed.reports import EXIT_INCOMPLETE

__all__ = [
  "ENV_COORDINATOR", "ENV_LAUNCHER", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID", "EXIT_INCOMPLETE",
  "Heartbeat", "Identity", "Liveness", "RunDir", "UpstreamMissing", "add_launch_command", "curve",
  "load_params", "lock_launch_dir", "resolve_identity", "run_launch", "save_params", "segments_of",
  "wait_for_activations", "wait_for_status",
]
