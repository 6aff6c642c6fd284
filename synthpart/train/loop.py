"""An optax loop: a frozen `LoopSpec` (what it trains, with which settings, where and how) and a
live `Loop` on its device (its compiled epoch, its `TrainState` pytree, data, constants and key,
and what it has done so far).

`start_loop` is the one place that chooses how a loop's epochs compile: it commits a segment's
(or the whole network's) parameters, optimizer state and data to its device (or device group)
and compiles there one `lax.scan` (`make_epoch`), a Python loop over a jitted step
(`StepwiseEpoch`, `train.scan = false`), or a `jax.pmap` epoch over a group
(`placement.backend = pmap`). A `Loop` dispatches whole epochs and chunks of steps (the epoch's
order and step keys drawn once for its chunks, `epoch_plan`), judges whether it diverged, and
gives its immutable `LoopRecord` (`record()`). `synthpart.train.driver` trains loops in rounds;
`synthpart.train.resume` checkpoints and restores them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from synthpart import placement as placement_lib
from synthpart.config import TrainConfig
from synthpart.errors import ResourceError
from synthpart.flops import segment_flops, segment_step_flops
from synthpart.memory import compiled_memory, tree_bytes
from synthpart.model import Params
from synthpart.optim import make_optimizer
from synthpart.records import LoopRecord
from synthpart.train.divergence import (
  CHANCE_TOLERANCE,
  all_finite,
  blown_up,
  chance_loss,
  is_out_of_memory,
  zero_prediction_loss,
)
from synthpart.train.epoch import StepwiseEpoch, TrainState, epoch_plan, make_epoch, make_steps
from synthpart.train.objectives import Constants, Inputs, Task, make_loss
from synthpart.train.stops import epochs_for
from synthpart.transfers import device_name, key_on


@dataclasses.dataclass(frozen=True)
class LoopSpec:
  """One optax loop before it exists: which method it trains for, its name, what it learns
  (`task`; None for a loop whose program is its own, model-parallel backprop), its settings
  (optimizer, learning rate, batch size, budget), where it trains (a device, or a sharding
  replicated over a device group) and how (`backend`: "sharding" or "pmap"), and the round of
  `synthpart.train.driver.drive` in which it trains its first epoch."""
  method: str
  name: str
  task: Task | None
  train: TrainConfig
  device: placement_lib.Placement
  backend: str = "sharding"
  start_round: int = 0

  @property
  def runs_pmap(self) -> bool:
    """Whether its epochs run through `jax.pmap` (the pmap backend, over a device group)."""
    return self.backend == "pmap" and placement_lib.is_group(self.device)


@dataclasses.dataclass
class Loop:
  """One optax loop, live on its device: its spec, its compiled epoch, its state (the
  `TrainState` pytree that trains), data, constants and key, and what it has done so far on the
  host (each epoch's mean loss and seconds, whether it diverged). `record()` is its
  `LoopRecord`."""
  spec: LoopSpec
  info: LoopRecord  # what the loop is: its record before it trained
  epoch_fn: Callable[..., tuple[TrainState, jax.Array]]  # compiled: see `make_epoch`
  state: TrainState
  data: dict[str, jax.Array]
  consts: Constants
  key: jax.Array
  last_checkpoint: str | None = None
  # chunk(num_steps) -> steps of the epoch in chunks (`make_steps`), compiled on first use
  chunk: Callable[[int], Callable[..., tuple[TrainState, jax.Array]]] | None = None
  compiled_chunks: dict[int, Any] = dataclasses.field(default_factory=dict)
  chance: float | None = None  # a classifying loop's chance-level loss (`chance_loss`)
  chance_epochs: int = 0  # epochs in a row at chance that stop it (0: never)
  # a regression loop's loss of predicting zeros for its targets (`zero_prediction_loss`)
  zero_loss: float | None = None
  # the loss of the loop's first step (its network as initialised); None until it has trained
  first_step_loss: float | None = None
  # plan(key, epoch) -> (order, step keys) of an epoch (`epoch_plan`), jitted; with the epoch
  # it was last made for, so the chunks of one epoch share it
  plan: Callable[..., tuple[jax.Array, jax.Array]] | None = None
  planned: tuple[int, tuple[jax.Array, jax.Array]] | None = None
  losses: list[float] = dataclasses.field(default_factory=list)  # each epoch's mean loss
  seconds: list[float] = dataclasses.field(default_factory=list)  # each epoch's seconds
  diverged: bool = False
  divergence: str | None = None
  compile_seconds: float = dataclasses.field(init=False)

  def __post_init__(self) -> None:
    self.compile_seconds = self.info.compile_seconds

  @property
  def name(self) -> str:
    return self.spec.name

  @property
  def method(self) -> str:
    return self.spec.method

  @property
  def device(self) -> placement_lib.Placement:
    return self.spec.device

  @property
  def start_round(self) -> int:
    return self.spec.start_round

  @property
  def epochs(self) -> int:
    """Epochs of its budget."""
    return self.info.epochs

  @property
  def steps_per_epoch(self) -> int:
    return self.info.steps_per_epoch

  @property
  def max_steps(self) -> int:
    """Its budget in steps (0: whole epochs)."""
    return self.info.max_steps

  @property
  def batch_size(self) -> int:
    return self.info.batch_size

  @property
  def done(self) -> int:
    """Epochs trained so far."""
    return len(self.losses)

  @property
  def finished(self) -> bool:
    """Whether every epoch of its budget is trained."""
    return self.done >= self.epochs

  @property
  def steps(self) -> int:
    """Steps trained so far."""
    steps = self.done * self.steps_per_epoch
    return min(steps, self.max_steps) if self.max_steps else steps

  def record(self) -> LoopRecord:
    """What the loop has done so far, as its immutable record."""
    return dataclasses.replace(self.info, loss_per_epoch=tuple(self.losses),
                               epoch_seconds=tuple(self.seconds),
                               compile_seconds=self.compile_seconds, diverged=self.diverged,
                               divergence=self.divergence)

  def epoch_in(self, round_index: int) -> int | None:
    """The epoch this loop trains in round `round_index` of `drive`, or None outside its span."""
    epoch = round_index - self.start_round
    return epoch if 0 <= epoch < self.epochs else None

  def dispatch(self, epoch: int) -> jax.Array:
    """Enqueues one epoch and returns its per-step losses without waiting for them."""
    epoch_index = jax.device_put(np.uint32(epoch), self.device)
    self.state, losses = self.epoch_fn(self.state, self.data, self.consts, self.key, epoch_index)
    return losses

  def dispatch_steps(self, epoch: int, first: int, count: int) -> jax.Array:
    """Enqueues steps first .. first+count-1 of `epoch` (exactly as the whole epoch would run
    them) and returns their losses [count] without waiting; `count` steps to the epoch's end
    complete it."""
    self.prepare_chunk(count)
    order, step_keys = self.plan_of(epoch)
    self.state, losses = self.compiled_chunks[count](
        self.state, self.data, self.consts, order, step_keys,
        jax.device_put(np.int32(first), self.device))
    return losses

  def plan_of(self, epoch: int) -> tuple[jax.Array, jax.Array]:
    """The epoch's order and step keys, made on the device once for all its chunks."""
    if self.plan is None:
      raise ValueError(f"{self.name}: this loop does not run epochs in chunks")
    if self.planned is None or self.planned[0] != epoch:
      self.planned = (epoch, self.plan(self.key, jax.device_put(np.uint32(epoch), self.device)))
    return self.planned[1]

  def prepare_chunk(self, count: int) -> None:
    """Compiles the chunk of `count` steps unless done before; its seconds join the loop's
    compile seconds."""
    if count in self.compiled_chunks:
      return
    if self.chunk is None:
      raise ValueError(f"{self.name}: this loop does not run epochs in chunks")
    start = time.perf_counter()
    chunk = self.chunk(count)
    lower = getattr(chunk, "lower", None)  # a stepwise epoch's chunks are compiled already
    self.compiled_chunks[count] = chunk if lower is None else lower(
        self.state, self.data, self.consts, *self.plan_of(0),
        jax.device_put(np.int32(0), self.device)).compile()
    self.compile_seconds += time.perf_counter() - start

  def restore(self, state: TrainState, meta: dict[str, Any], path: str) -> None:
    """Takes up a checkpoint of this loop: its state, and its losses and times from `meta`."""
    self.state = state
    self.losses = list(meta["loss_per_epoch"])
    self.seconds = list(meta["epoch_seconds"])
    self.first_step_loss = meta.get("first_step_loss")
    self.last_checkpoint = path

  def meta(self) -> dict[str, Any]:
    """What a checkpoint of this loop keeps beside its state (JSON)."""
    return {"epoch": self.done, "key": jax.device_get(jax.random.key_data(self.key)).tolist(),
            "loss_per_epoch": self.losses, "epoch_seconds": self.seconds,
            "first_step_loss": self.first_step_loss}

  def record_epoch(self, losses: jax.Array | np.ndarray, seconds: float) -> bool:
    """Stores an epoch's mean loss and time, then `judge`s it; returns False if it diverged."""
    self.store(losses, seconds)
    return self.judge()

  def store(self, losses: jax.Array | np.ndarray, seconds: float) -> None:
    """Stores an epoch's mean loss and time (and, for its first epoch, its first step's loss)."""
    losses = np.asarray(jax.device_get(losses))
    if not self.done and losses.size:
      self.first_step_loss = float(losses.ravel()[0])
    self.losses.append(float(np.mean(losses)))
    self.seconds.append(seconds)

  def judge(self) -> bool:
    """Marks the loop diverged, saying why, where after its last epoch the loss or the parameters
    are not finite or the loss stayed at chance (module docstring); returns False then. The
    parameters are checked on their device, outside the timed part of a round."""
    if not self.diverged:
      reason = self._divergence(self.losses[-1])
      if reason:
        self.diverged = True
        self.divergence = reason
    return not self.diverged

  def _divergence(self, loss: float) -> str | None:
    if not math.isfinite(loss):
      return f"loss {loss} at epoch {self.done}"
    if not bool(all_finite(self.state.params)):
      return f"parameters not finite after epoch {self.done}"
    n, recent = self.chance_epochs, self.losses[-self.chance_epochs:]
    if (self.chance is not None and n and len(recent) == n
        and all(l >= (1 - CHANCE_TOLERANCE) * self.chance for l in recent)):
      return (f"loss no better than chance ({self.chance:.4g}) for {n} epochs in a row, last "
              f"{loss:.4g}")
    if self.zero_loss is not None:
      return blown_up(loss, self.done, self.zero_loss, self.first_step_loss,
                      "the loss of predicting zeros")
    return blown_up(loss, self.done, self.chance, self.first_step_loss)


def objective(task: Task) -> str:
  """What a loop learns, for results: ``inputs -> sil``, ``activations -> labels``..."""
  source = {Inputs.PIXELS: "inputs", Inputs.FEATURES: "activations",
            Inputs.SIL: "sil+noise"}[task.inputs]
  return f"{source} -> {'labels' if task.spec.is_last else 'sil'}"


def start_loop(spec: LoopSpec, params: Params, data: dict[str, Any], consts: Constants,
               key: jax.Array) -> Loop:
  """Commits params, optimizer state and data to `spec.device` and compiles the epoch there.

  The device may be a sharding replicated over a device group (`Problem.device_of`): everything
  is replicated over the group and each minibatch split over it (`synthpart.placement`), by
  `jax.jit` over the group's mesh, or with the pmap backend by `jax.pmap` (whose epochs run
  whole). This is the one place that chooses how a loop's epochs are compiled.
  """
  task, train, device = spec.task, spec.train, spec.device
  if task is None:
    raise ValueError(f"{spec.name}: start_loop needs the loop's task")
  num_examples = len(data["y"])
  optimizer = make_optimizer(train, num_examples // train.batch_size)
  classifies = task.spec.is_last or consts.sil_out is None  # as `make_loss` decides
  chance = chance_loss(data["y"]) if classifies else None
  zero_loss = (None if classifies or consts.sil_out is None
               else zero_prediction_loss(consts.sil_out, data["y"], task.sil_loss))
  try:
    with jax.default_device(placement_lib.lead_device(device)):
      params = jax.device_put(params, device)
      state = jax.jit(lambda p: TrainState(p, optimizer.init(p)))(params)
      data = jax.device_put(data, device)
      key = key_on(key, device)
      start = time.perf_counter()
      chunk: Callable[[int], Callable[..., tuple[TrainState, jax.Array]]] | None = None
      plan = jax.jit(functools.partial(epoch_plan, num_examples=num_examples,
                                       batch_size=train.batch_size))
      run: Callable[..., tuple[TrainState, jax.Array]]
      compiled: Any  # what `compiled_memory` reads: a compiled program, or a bound pmap epoch
      if spec.runs_pmap:
        size = len(placement_lib.group_devices(device))
        pmapped = placement_lib.PmapEpoch(
            make_epoch(placement_lib.pmap_loss(make_loss(task), size), optimizer, train.batch_size,
                       num_examples, train.loss_scale, reduce=placement_lib.pmap_mean),
            device, jax.random.key_impl(key))
        run = compiled = pmapped.lower(state, data, consts, key,
                                       jax.device_put(np.uint32(0), device)).compile()
      elif train.scan:
        loss = placement_lib.shard_batches(make_loss(task), device)
        epoch = make_epoch(loss, optimizer, train.batch_size, num_examples, train.loss_scale)
        chunk = functools.lru_cache(maxsize=None)(functools.partial(
            make_steps, loss, optimizer, train.batch_size, num_examples,
            loss_scale=train.loss_scale))
        run = compiled = epoch.lower(state, data, consts, key,
                                     jax.device_put(np.uint32(0), device)).compile()
      else:
        loss = placement_lib.shard_batches(make_loss(task), device)
        run = stepwise = StepwiseEpoch(loss, optimizer, train.batch_size, num_examples,
                                       train.loss_scale)
        chunk = functools.lru_cache(maxsize=None)(stepwise.chunk)
        compiled = stepwise.compile(state, data, consts, key)
      compile_seconds = time.perf_counter() - start
  except Exception as e:
    if is_out_of_memory(e):
      raise ResourceError(f"out of memory starting {spec.name} on {device_name(device)}: its "
                          f"parameters take {_mib(tree_bytes(params))} and its data "
                          f"{_mib(tree_bytes(data))}; try smaller model.hidden or fewer "
                          f"examples") from None
    raise
  steps_per_epoch = num_examples // train.batch_size
  info = LoopRecord(
      name=spec.name, layers=(task.spec.start, task.spec.stop), objective=objective(task),
      device=device_name(device), optimizer=train.optimizer, learning_rate=train.learning_rate,
      batch_size=train.batch_size, epochs=epochs_for(steps_per_epoch, train.epochs, train.steps),
      steps_per_epoch=steps_per_epoch, max_steps=train.steps, compile_seconds=compile_seconds,
      memory=compiled_memory(compiled, data=tree_bytes(data)).to_dict(),
      flops_per_step=segment_step_flops(task.spec, train.batch_size, train.optimizer),
      forward_flops=segment_flops(task.spec).forward,
      backend="pmap" if spec.runs_pmap else "sharding")
  return Loop(spec, info, run, state, data, consts, key, chunk=chunk, chance=chance,
              chance_epochs=train.chance_epochs, zero_loss=zero_loss,
              plan=None if chunk is None else plan)


def _mib(size: int) -> str:
  return f"{size / 2**20:,.1f} MiB"


def resource_error(loop: Loop, e: Exception) -> Exception:
  """An out-of-memory error of a loop's epoch as a `ResourceError` naming the loop and its size;
  any other error as it is."""
  if not is_out_of_memory(e):
    return e
  r = loop.info
  peak = (r.memory or {}).get("peak")
  return ResourceError(f"out of memory training {loop.method} {r.name} on {r.device} (batch size "
                       f"{r.batch_size}, compiled peak {_mib(peak) if peak else 'unknown'}): try "
                       f"smaller model.hidden or train.batch_size")
