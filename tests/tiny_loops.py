"""Tiny live loops for unit tests of the engine: each kind compiled once per process, then copied
fresh (its initial state and data put on its device again) for every drive that needs one."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax

from synthpart.model import whole_network
from synthpart.train import evaluation, segments
from synthpart.train import problem as P
from synthpart.train import schedules as S
from synthpart.train.hooks import Evaluate
from synthpart.train.loop import Loop
from synthpart.train.objectives import Inputs
from synthpart.train.refresh import Feeds
from synthpart.transfers import Ledger

from tiny import tiny_config, tiny_dataset

# 256 examples in batches of 64: 4 steps per epoch.
SMALL = {"model.hidden": [8, 8], "train.epochs": 3, "train.batch_size": 64}
STEPS_PER_EPOCH = 4
# The pipelined schedule's refreshes every 2 steps; its later segment starts a round later.
REFRESH_STEPS, PIPELINE_START = 2, 1
DIVERGING = {"train.optimizer": "sgd", "train.learning_rate": 1e6, "train.chance_epochs": 0}


@functools.cache
def problem(**overrides: Any) -> P.Problem:
  """A tiny two-segment problem on two simulated devices (SMALL with `overrides`)."""
  return P.make_problem(tiny_config(**{**SMALL, **overrides}), tiny_dataset(),
                        jax.devices()[:2], warn_shared=False)


@dataclasses.dataclass(frozen=True)
class Template:
  """A compiled loop and its initial state and data on the host."""
  loop: Loop
  state: Any
  data: dict[str, Any]


def _template(loop: Loop) -> Template:
  return Template(loop, jax.device_get(loop.state), jax.device_get(loop.data))


@functools.cache
def network_template(name: str = "network", **overrides: Any) -> Template:
  """The whole network end to end on device 0."""
  p = problem(**overrides)
  spec = segments.loop_spec(p, "m", name, whole_network(p.specs), Inputs.PIXELS)
  return _template(segments.segment_loop(p, spec, {"x": p.train_x, "y": p.train_y}))


@functools.cache
def parallel_template(segment: int) -> Template:
  """Segment `segment` of the parallel schedule on device `segment`."""
  return _template(S.parallel_loop(problem(), segment))


@functools.cache
def pipelined_template() -> Template:
  """The later segment of the pipelined schedule, from round `PIPELINE_START` on: its inputs
  are a buffer of zeros until `Feeds` refreshes it."""
  return _template(S.pipelined_loop(problem(), 1, PIPELINE_START))


def fresh(template: Template, start_round: int = 0, name: str | None = None,
          method: str | None = None) -> Loop:
  """A new loop as `template`'s was before it trained (its compiled programs shared), trained
  from round `start_round` (named `name` and for `method`, where given)."""
  loop = template.loop
  spec = dataclasses.replace(loop.spec, start_round=start_round, name=name or loop.spec.name,
                             method=method or loop.spec.method)
  return dataclasses.replace(
      loop, spec=spec, info=dataclasses.replace(loop.info, name=spec.name),
      state=jax.device_put(template.state, loop.device),
      data=jax.device_put(template.data, loop.device), losses=[], seconds=[], diverged=False,
      divergence=None, first_step_loss=None, planned=None, last_checkpoint=None)


def network(name: str = "network", start_round: int = 0, **overrides: Any) -> Loop:
  return fresh(network_template(**overrides), start_round, name)


def parallel(segment: int, start_round: int = 0) -> Loop:
  return fresh(parallel_template(segment), start_round)


@functools.cache
def evaluate_fn() -> Evaluate:
  """The composed network's test accuracy from the parameters of its segments (both, or the
  whole network's alone), on device 0."""
  p = problem()
  return evaluation.make_evaluator(p, p.device_of(0))



def pipelined() -> tuple[list[Loop], Feeds]:
  """Both segments of the pipelined schedule, fresh, and the hook that feeds the later one (the
  first segment trains as the parallel schedule's does, on the dataset)."""
  later = pipelined_template().loop
  loops = [fresh(parallel_template(0), method=later.method), fresh(pipelined_template(),
                                                                  PIPELINE_START)]
  tasks = [loop.spec.task for loop in loops]
  assert all(task is not None for task in tasks)
  return loops, Feeds(loops, [t for t in tasks if t is not None], Ledger(),
                      REFRESH_STEPS)
