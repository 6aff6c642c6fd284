"""The network of a launch, assembled by process 0 once every segment is done: the segments'
parameters composed and evaluated (and the recovery epochs trained, if any), and the results
document of `synthpart train` plus what each process sent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from synthpart.distributed.launchdir import RunDir, Status, load_params, owner
from synthpart.progress import Progress
from synthpart.records import CurvePoint, LoopRecord, MethodRecord, Transfer
from synthpart.results import results_document
from synthpart.train import schedules as S
from synthpart.train.evaluation import make_evaluator
from synthpart.train.problem import Problem, describe


def segment_result(document: dict[str, Any]) -> LoopRecord:
  """A segment's loop record, from the document in its status."""
  return LoopRecord.from_dict(document)


def curve(schedule: str, segments: Sequence[LoopRecord],
          handoff_seconds: Sequence[float]) -> tuple[CurvePoint, ...]:
  """The method's curve, rebuilt from the segments' epoch timings (no accuracy: the segments
  trained in different processes, and the network exists only once all are done).

  Parallel: segments run at once, so a round ends when its slowest segment does. Sequential:
  one after the other, each after its hand-over.
  """
  def examples(s: LoopRecord, epochs: int) -> int:
    return epochs * s.steps_per_epoch * s.batch_size

  points: list[CurvePoint] = []
  if schedule == "parallel":
    for e in range(1, max(len(s.loss_per_epoch) for s in segments) + 1):
      points.append(CurvePoint(
          epoch=e, seconds=max(sum(s.epoch_seconds[:e]) for s in segments),
          examples=tuple(examples(s, min(e, len(s.loss_per_epoch))) for s in segments)))
    return tuple(points)
  elapsed = 0.0
  for i, s in enumerate(segments):
    elapsed += handoff_seconds[i]
    before = tuple(examples(t, len(t.loss_per_epoch)) for t in segments[:i])
    for e in range(1, len(s.loss_per_epoch) + 1):
      points.append(CurvePoint(epoch=e, seconds=elapsed + sum(s.epoch_seconds[:e]),
                               examples=(*before, examples(s, e))))
    elapsed += sum(s.epoch_seconds)
  return tuple(points)


def process_summaries(statuses: dict[int, Status], num_processes: int) -> list[dict[str, Any]]:
  """Per process: its segments, hosts and the bytes it sent (activations handed to another
  process, and trained parameters saved for the assembly)."""
  out = []
  for i in range(num_processes):
    mine = [s for k, s in sorted(statuses.items()) if owner(k, num_processes) == i]
    activations = sum(s.get("bytes_sent", {}).get("activations", 0) for s in mine)
    parameters = sum(s.get("bytes_sent", {}).get("parameters", 0) for s in mine)
    out.append({"process": i, "segments": [s["segment"] for s in mine],
                "hosts": sorted({s["host"] for s in mine if s.get("host")}),
                "devices": sorted({d for s in mine for d in s.get("process_devices", [])}),
                "bytes_sent": {"activations": activations, "parameters": parameters,
                               "total": activations + parameters}})
  return out


def _device_order(name: str) -> tuple[str, int]:
  return name.split(":")[0], int(name.split(":")[-1])


def assemble(problem: Problem, run: RunDir, statuses: dict[int, Status], source: str,
             progress: Progress, fingerprint: str | None = None
             ) -> tuple[list[MethodRecord], dict[str, Any]]:
  """Composes the trained segments, evaluates them (and trains the recovery epochs, if any) on
  this process's devices; returns the methods and the results document (recording the data's
  `fingerprint`)."""
  order = range(len(problem.specs))
  params = [load_params(run.params(k)) for k in order]
  segments = [segment_result(statuses[k]["result"]) for k in order]
  points = curve(problem.config.schedule, segments,
                 [statuses[k].get("handoff_seconds", 0.0) for k in order])
  method = MethodRecord(
      f"pnn-{problem.config.schedule}", segments=tuple(segments),
      transfers=tuple(Transfer(**t) for k in order for t in statuses[k].get("transfers", [])),
      compile_seconds=sum(s.compile_seconds for s in segments), curve=points,
      wall_seconds=points[-1].seconds if points else 0.0,
      test_accuracy=make_evaluator(problem, problem.device_of(0))(params))
  runs = [method]
  if problem.config.recovery.epochs > 0:
    runs.append(S.train_recovery(problem, params, method, progress)[1])
  document = results_document("launch", describe(problem, source, fingerprint),
                              problem.config.to_dict(), runs)
  summaries = process_summaries(statuses, run.num_processes)
  document["devices"] = sorted({d for p in summaries for d in p["devices"]}, key=_device_order)
  document["processes"] = summaries
  return runs, document
