"""What training produced, as typed immutable records: transfers, curve points, loops, methods.

The engine (`synthpart.train.driver`) builds these and returns them; nothing holds a record and
changes it. A record's `to_dict` is its results.json entry and `from_dict` reads it back
(`synthpart.results` writes the whole document)::

  Transfer     one copy between devices: what, from where to where, bytes, kind
  CurvePoint   the method after an epoch round (or a stop inside one): seconds, examples per
               loop, steps per loop, the composed network's accuracy where evaluated
  LoopRecord   one optax loop: where it trained, with what, its loss after every epoch
  MethodRecord one method: its loops, curve, transfers, time, evaluation cost, test accuracy

`MethodRecord.segments` is the list results.json calls "segments": one record per optax loop
of the method (the conventional network, each segment, the recovery epochs), in training order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

TRAINING, EVALUATION = "training", "evaluation"


@dataclasses.dataclass(frozen=True)
class Transfer:
  """One copy between devices: what moved, from where to where, its bytes and its kind
  (`TRAINING`: what training needs; `EVALUATION`: parameters gathered to test the network)."""
  what: str
  source: str
  destination: str
  bytes: int
  kind: str = TRAINING

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CurvePoint:
  """The method after epoch round `epoch` (1-based), or at a stop inside it (`partial`).

  `seconds`: cumulative training seconds (evaluation excluded); `examples` and `steps`: what each
  loop of the method has trained so far (`steps` recorded where rounds ran in chunks);
  `accuracy`: the composed network's test accuracy, where evaluated; `round`: the round a point
  stands for where it differs from its position (a reference read out once, at the end).
  """
  epoch: int
  seconds: float
  examples: tuple[int, ...]
  accuracy: float | None = None
  steps: tuple[int, ...] | None = None
  partial: bool = False
  round: int | None = None

  def to_dict(self) -> dict[str, Any]:
    """The results.json point: only the keys that apply."""
    out: dict[str, Any] = {"epoch": self.epoch}
    if self.round is not None:
      out["round"] = self.round
    if self.partial:
      out["partial"] = True
    out["seconds"] = self.seconds
    out["examples"] = list(self.examples)
    if self.steps is not None:
      out["steps"] = list(self.steps)
    if self.accuracy is not None:
      out["accuracy"] = self.accuracy
    return out

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> CurvePoint:
    steps = d.get("steps")
    return cls(epoch=int(d["epoch"]), seconds=float(d["seconds"]),
               examples=tuple(int(n) for n in d["examples"]),
               accuracy=None if d.get("accuracy") is None else float(d["accuracy"]),
               steps=None if steps is None else tuple(int(n) for n in steps),
               partial=bool(d.get("partial", False)),
               round=None if d.get("round") is None else int(d["round"]))


@dataclasses.dataclass(frozen=True)
class LoopRecord:
  """What one optax loop did: where and with what it trained, and its loss after every epoch.

  `backend` is how its epochs ran on a device group: "sharding" (`jax.jit` over the group's
  mesh, or one device) or "pmap" (`jax.pmap`). `memory` is XLA's buffer assignment of its
  compiled epoch (`synthpart.memory.MemoryUse.to_dict()`, the training data counted as `data`);
  `flops_per_step` the analytic FLOPs of one training step and `forward_flops` of one
  example's forward pass through its blocks (`synthpart.flops`). `max_steps`: its budget in
  steps (`train.steps`); 0: `epochs` whole epochs.
  """
  name: str
  layers: tuple[int, int]  # [start, stop) of the network's blocks
  objective: str
  device: str
  optimizer: str
  learning_rate: float
  batch_size: int
  epochs: int
  steps_per_epoch: int
  loss_per_epoch: tuple[float, ...] = ()
  epoch_seconds: tuple[float, ...] = ()
  compile_seconds: float = 0.0
  diverged: bool = False
  divergence: str | None = None  # why the loop was stopped as diverged
  memory: Mapping[str, int] | None = None
  flops_per_step: int | None = None
  forward_flops: int | None = None
  max_steps: int = 0
  backend: str = "sharding"

  @property
  def steps(self) -> int:
    """Steps this loop has trained in the epochs it finished."""
    steps = len(self.loss_per_epoch) * self.steps_per_epoch
    return min(steps, self.max_steps) if self.max_steps else steps

  @property
  def examples(self) -> int:
    """Training examples this loop has seen so far."""
    return self.steps * self.batch_size

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["layers"] = list(self.layers)
    out["loss_per_epoch"] = list(self.loss_per_epoch)
    out["epoch_seconds"] = list(self.epoch_seconds)
    out["memory"] = None if self.memory is None else dict(self.memory)
    return out

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> LoopRecord:
    """A loop back from its results.json entry (null losses come back as NaN; keys of other
    versions are ignored, missing ones take their defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {k: v for k, v in d.items() if k in names}
    return cls(**{**fields, "layers": (int(d["layers"][0]), int(d["layers"][1])),
                  "loss_per_epoch": tuple(_number(v) for v in d["loss_per_epoch"]),
                  "epoch_seconds": tuple(d.get("epoch_seconds", ()))})


@dataclasses.dataclass(frozen=True)
class MethodRecord:
  """One method's outcome: test accuracy, time, every loop, and its accuracy along the way.

  `curve` holds one point per epoch round (and, evaluating within epochs, points inside
  rounds). `wall_seconds` is the training's time after compilation; evaluating the composed
  network costs `eval_seconds` and `eval_flops` over `evaluations`, counted apart.
  `test_accuracy` is NaN until the method is evaluated at its end.
  """
  method: str
  test_accuracy: float = math.nan
  wall_seconds: float = 0.0
  compile_seconds: float = 0.0
  evaluations: int = 0
  eval_seconds: float = 0.0
  eval_flops: float = 0.0
  segments: tuple[LoopRecord, ...] = ()
  curve: tuple[CurvePoint, ...] = ()
  transfers: tuple[Transfer, ...] = ()

  @property
  def diverged(self) -> bool:
    return any(s.diverged for s in self.segments)

  @property
  def status(self) -> str:
    """"diverged" where a loop diverged (its accuracy is no result), else "ok"."""
    return "diverged" if self.diverged else "ok"

  def tally(self) -> Tally:
    """What the method has done so far apart from its loops: what a checkpoint keeps."""
    return Tally(self.curve, self.wall_seconds, self.evaluations, self.eval_seconds,
                    self.eval_flops, self.transfers)

  def with_tally(self, tally: Tally) -> MethodRecord:
    return dataclasses.replace(
        self, curve=tally.curve, wall_seconds=tally.wall_seconds,
        evaluations=tally.evaluations, eval_seconds=tally.eval_seconds,
        eval_flops=tally.eval_flops, transfers=tally.transfers)

  def to_dict(self) -> dict[str, Any]:
    """The results.json entry: with its status, and no accuracy where it diverged."""
    return {"method": self.method,
            "test_accuracy": math.nan if self.diverged else self.test_accuracy,
            "wall_seconds": self.wall_seconds, "compile_seconds": self.compile_seconds,
            "evaluations": self.evaluations, "eval_seconds": self.eval_seconds,
            "eval_flops": self.eval_flops,
            "segments": [s.to_dict() for s in self.segments],
            "curve": [p.to_dict() for p in self.curve],
            "transfers": [t.to_dict() for t in self.transfers],
            "status": self.status}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> MethodRecord:
    """A method back from its results.json entry (null numbers come back as NaN)."""
    return cls(method=d["method"], test_accuracy=_number(d["test_accuracy"]),
               wall_seconds=float(d["wall_seconds"]),
               compile_seconds=float(d["compile_seconds"]),
               evaluations=int(d.get("evaluations", 0)),
               eval_seconds=float(d.get("eval_seconds", 0.0)),
               eval_flops=float(d.get("eval_flops", 0.0)),
               segments=tuple(LoopRecord.from_dict(s) for s in d["segments"]),
               curve=tuple(CurvePoint.from_dict(p) for p in d["curve"]),
               transfers=tuple(Transfer(**t) for t in d.get("transfers", [])))


@dataclasses.dataclass(frozen=True)
class Tally:
  """A method's record apart from its loops, at the end of an epoch round: its curve, training
  seconds, evaluations and their cost, and transfers. Every checkpoint a loop writes in a
  round holds the method's tally at that round's end, and resuming from round r restores
  the tally saved at r (`synthpart.train.resume`)."""
  curve: tuple[CurvePoint, ...] = ()
  wall_seconds: float = 0.0
  evaluations: int = 0
  eval_seconds: float = 0.0
  eval_flops: float = 0.0
  transfers: tuple[Transfer, ...] = ()

  def to_meta(self) -> dict[str, Any]:
    """The tally as a checkpoint's meta keeps it (JSON)."""
    return {"curve": [p.to_dict() for p in self.curve], "wall_seconds": self.wall_seconds,
            "evaluations": self.evaluations, "eval_seconds": self.eval_seconds,
            "eval_flops": self.eval_flops, "transfers": [t.to_dict() for t in self.transfers]}

  @classmethod
  def from_meta(cls, meta: Mapping[str, Any], default: Tally | None = None) -> Tally:
    """The tally a checkpoint's meta holds; what it lacks (a checkpoint of an older version)
    as in `default`."""
    d = default or cls()
    return cls(curve=tuple(CurvePoint.from_dict(p) for p in meta.get("curve", ())),
               wall_seconds=float(meta.get("wall_seconds", d.wall_seconds)),
               evaluations=int(meta.get("evaluations", d.evaluations)),
               eval_seconds=float(meta.get("eval_seconds", d.eval_seconds)),
               eval_flops=float(meta.get("eval_flops", d.eval_flops)),
               transfers=(tuple(Transfer(**t) for t in meta["transfers"]) if "transfers" in meta
                          else d.transfers))


def divergence_reason(record: MethodRecord) -> str:
  """Which loop of a method diverged and why, in a few words."""
  for s in record.segments:
    if s.diverged:
      return f"{s.name}: {s.divergence or 'diverged'}"
  return "no loop diverged"


def summarize(transfers: Sequence[Transfer], label: str = "") -> list[Transfer]:
  """One record per (what, source, destination, kind), bytes summed, in order of first
  appearance; `what` says how many transfers it folds (and `label`) where more than one."""
  totals: dict[tuple[str, str, str, str], tuple[int, int]] = {}
  for t in transfers:
    count, size = totals.get((t.what, t.source, t.destination, t.kind), (0, 0))
    totals[(t.what, t.source, t.destination, t.kind)] = (count + 1, size + t.bytes)
  out = []
  for (what, source, destination, kind), (count, size) in totals.items():
    note = ", ".join(x for x in (label, f"{count} transfers" if count > 1 else "") if x)
    out.append(Transfer(f"{what} ({note})" if note else what, source, destination, size, kind))
  return out


def _number(value: float | None) -> float:
  return math.nan if value is None else float(value)
