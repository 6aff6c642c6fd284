"""How a segment (or the whole network) becomes an optax loop: its initial parameters, its
objective, the constants it reads and its `LoopSpec`, read from the run's settings in one place.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from synthpart.config import TrainConfig
from synthpart.model import Params, init_segment
from synthpart.partition import SegmentSpec
from synthpart.placement import Placement
from synthpart.train.loop import Loop, LoopSpec, start_loop
from synthpart.train.objectives import Constants, Inputs, Task
from synthpart.train.problem import INIT_STREAM, ORDER_STREAM, Problem, input_constants
from synthpart.transfers import key_on


def init_params(problem: Problem, spec: SegmentSpec, device: Placement) -> Params:
  """Initialises a segment directly on its device (layer l from the init key folded with l)."""
  key = key_on(problem.key(INIT_STREAM), device)
  return jax.jit(functools.partial(init_segment, spec=spec))(key)


def segment_task(problem: Problem, spec: SegmentSpec, inputs: Inputs) -> Task:
  """The objective of segment `spec` fed `inputs`."""
  s = problem.config.sil
  noise = s.noise * (s.scale if s.noise_relative else 1.0) if inputs == Inputs.SIL else 0.0
  return Task(spec=spec, inputs=inputs, sil_loss=s.loss, noise=noise,
              input_scale=problem.input_scale)


def segment_constants(problem: Problem, spec: SegmentSpec, inputs: Inputs,
                      device: Placement) -> Constants:
  """The SIL tables and input statistics segment `spec` reads, on its device."""
  consts = input_constants(problem, device) if inputs == Inputs.PIXELS else Constants()
  if inputs == Inputs.SIL and spec.input_cut is not None:
    consts = consts._replace(sil_in=jax.device_put(problem.sil[spec.input_cut], device))
  if spec.output_cut is not None:
    consts = consts._replace(sil_out=jax.device_put(problem.sil[spec.output_cut], device))
  return consts


def loop_spec(problem: Problem, method: str, name: str, spec: SegmentSpec, inputs: Inputs,
              train: TrainConfig | None = None, start_round: int = 0) -> LoopSpec:
  """The loop that trains segment `spec` (or the whole network) fed `inputs` for `method`: its
  objective, its settings (the segment's own, or `train`), its device and the run's backend.
  Every loop of every schedule is specified here."""
  return LoopSpec(method=method, name=name, task=segment_task(problem, spec, inputs),
                  train=train or problem.config.segment_train(spec.index),
                  device=problem.device_of(spec.index),
                  backend=problem.config.placement.backend, start_round=start_round)


def segment_loop(problem: Problem, spec: LoopSpec, data: dict[str, Any],
                 params: Params | None = None, key: jax.Array | None = None) -> Loop:
  """Starts the loop `spec` on its device: its segment initialised there (or `params`), the
  SIL tables and input statistics it reads, its data, and its order key (the order stream
  folded with its first block, or `key`)."""
  assert spec.task is not None
  segment = spec.task.spec
  return start_loop(spec, init_params(problem, segment, spec.device) if params is None
                    else params, data,
                    segment_constants(problem, segment, spec.task.inputs, spec.device),
                    problem.key(ORDER_STREAM, segment.start) if key is None else key)


