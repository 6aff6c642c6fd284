import itertools

import jax
import jax.numpy as jnp
import optax
import pytest

from synthpart import curves as C
from synthpart import flops as F
from synthpart import memory as M
from synthpart.bench import compiled as B
from synthpart.model import apply_segment, dense_plan, init_segment, whole_network
from synthpart.progress import Progress
from synthpart.results import results_document
from synthpart.train import problem as P
from synthpart.train import schedules as S
from synthpart.train.epoch import TrainState, make_epoch
from synthpart.train.objectives import Constants, Task, make_loss

from tiny import tiny_config, tiny_dataset

# Its module fixture is made once: every test of this file on one worker (pytest-xdist).
pytestmark = pytest.mark.xdist_group("accounting")


QUIET = Progress(quiet=True)
WIDTHS = (64, 48, 48, 48, 10)
BATCH = 32
# The analytic count leaves out the loss and the input scaling: O(width) per example, about 1%
# at these tiny widths (0.1% at width 512).
TOLERANCE = 0.02


def _grad_flops(spec, inputs: str) -> float:
  """XLA's CPU count for one minibatch's loss gradient of a segment trained on `inputs`."""
  task = Task(spec=spec, inputs=inputs, input_scale=255.0)
  consts = Constants(
      sil_in=jnp.zeros((10, spec.widths[0])) if inputs == "sil" else None,
      sil_out=None if spec.is_last else jnp.zeros((10, spec.widths[-1])))
  dtype = jnp.uint8 if inputs == "pixels" else jnp.float32
  batch = {"x": jnp.zeros((BATCH, spec.widths[0]), dtype), "y": jnp.zeros((BATCH,), jnp.int32)}
  params = init_segment(jax.random.key(0), spec)
  grad = jax.jit(jax.grad(make_loss(task)))
  return F.xla_flops(grad.lower(params, batch, consts, jax.random.key(0)).compile())


@pytest.mark.parametrize("segment,inputs", [
    ("whole", "pixels"), (0, "pixels"), (1, "features"), (1, "sil")])
def test_training_flops_match_xla(segment, inputs):
  specs = dense_plan(WIDTHS, (2,))
  spec = whole_network(specs) if segment == "whole" else specs[segment]
  analytic = F.segment_flops(spec).training * BATCH
  assert _grad_flops(spec, inputs) == pytest.approx(analytic, rel=TOLERANCE)
  # The same count from a network's widths and a layer range, as the results documents use.
  assert F.loop_flops(WIDTHS, spec.start, spec.stop).training * BATCH == analytic


def test_forward_flops_are_exact():
  spec = whole_network(dense_plan(WIDTHS, (2,)))
  params = init_segment(jax.random.key(0), spec)
  apply = jax.jit(lambda p, x: apply_segment(p, x, spec))
  compiled = apply.lower(params, jnp.zeros((BATCH, WIDTHS[0]))).compile()
  assert F.xla_flops(compiled) == F.segment_flops(spec).forward * BATCH
  assert F.forward_flops(WIDTHS, 0, 4) == F.segment_flops(spec).forward


def test_input_grads_inside_backprop_match_xla():
  spec = dense_plan(WIDTHS, (2,))[1]
  params = init_segment(jax.random.key(0), spec)

  def loss(p, x, cotangent):  # a full cotangent, as the next segment would send back
    return jnp.vdot(apply_segment(p, x, spec), cotangent)

  x = jnp.zeros((BATCH, spec.widths[0]))
  cotangent = jnp.zeros((BATCH, spec.widths[-1]))
  # value_and_grad: with grad alone, XLA drops the last layer's forward (only its loss, unused,
  # reads it), which no training step can.
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  compiled = step.lower(params, x, cotangent).compile()
  analytic = F.segment_flops(spec, input_grads=True).training * BATCH
  assert F.xla_flops(compiled) == pytest.approx(analytic, rel=TOLERANCE)
  without = F.segment_flops(spec).training * BATCH
  assert analytic - without == 2 * WIDTHS[2] * WIDTHS[3] * BATCH


def test_epoch_step_with_optimizer_matches_xla():
  spec = whole_network(dense_plan(WIDTHS, (2,)))
  optimizer = optax.adam(1e-3)
  params = init_segment(jax.random.key(0), spec)
  task = Task(spec=spec, inputs="pixels", input_scale=255.0)
  epoch = make_epoch(make_loss(task), optimizer, BATCH, 4 * BATCH)
  data = {"x": jnp.zeros((4 * BATCH, WIDTHS[0]), jnp.uint8),
          "y": jnp.zeros((4 * BATCH,), jnp.int32)}
  compiled = epoch.lower(TrainState(params, optimizer.init(params)), data, Constants(),
                         jax.random.key(0), jnp.uint32(0)).compile()
  # XLA counts a loop's body once, whatever its trip count: the epoch's count is one step's
  # (plus the epoch's shuffle, hence the wider tolerance).
  step = F.step_flops(WIDTHS, 0, 4, BATCH, "adam")
  assert F.xla_flops(compiled) == pytest.approx(step, rel=0.05)
  assert F.num_params(WIDTHS, 0, 4) == sum(x.size for x in jax.tree.leaves(params))


def test_method_flops_relations():
  specs = dense_plan(WIDTHS, (2,))
  flops = F.method_flops(specs)
  conv = flops["conventional"]
  mp = flops["model-parallel segment 0"] + flops["model-parallel segment 1"]
  assert mp == conv  # model parallelism moves the work, it does not change it
  partitioned = flops["segment 0"] + flops["segment 1"]
  # Partitioned loops skip one matmul: the gradient w.r.t. the cut activations.
  assert conv.training - partitioned.training == 2 * WIDTHS[2] * WIDTHS[3]
  assert flops["recovery"] == conv
  assert conv.forward == sum(2 * a * b + b for a, b in itertools.pairwise(WIDTHS)) + 3 * 48


@pytest.fixture(scope="module")
def compared():
  """A results document of conventional, sequential (+recovery) and parallel runs."""
  problem = P.make_problem(tiny_config(**{"train.epochs": 2}), tiny_dataset(),
                           jax.devices()[:2])
  conv = S.train_conventional(problem, QUIET)[1]
  seq_params, seq = S.train_sequential(problem, QUIET)
  rec = S.train_recovery(problem, seq_params, seq, QUIET)[1]
  par = S.train_parallel(problem, QUIET)[1]
  runs = [conv, seq, rec, par]
  document = results_document("compare", P.describe(problem, "generated"),
                              problem.config.to_dict(), runs)
  return problem, runs, document


def test_bytes_moved_match_the_ledger(compared):
  problem, runs, _ = compared
  n, b = len(problem.train_y), problem.config.train.batch_size
  for run in runs:
    expected = F.bytes_moved(problem.specs, run.method, n, b, problem.config.train.epochs)
    assert C.ledger_bytes(run.transfers) == expected, run.method
  assert F.bytes_moved(problem.specs, "pnn-sequential", n, b, 2) == n * 16 * 4 > 0
  assert F.join_bytes(problem.specs) == (16 * 16 + 16 + 16 * 4 + 4) * 4


def test_accuracy_curve_flops(compared):
  problem, _, document = compared
  widths = C.document_widths(document)
  assert widths == problem.widths
  curves = C.accuracy_curves(document)
  assert set(curves) == {"conventional", "pnn-sequential", "pnn-sequential+recovery",
                         "pnn-parallel"}
  n, b = len(problem.train_y), 32
  steps = n // b
  conv_step = F.step_flops(widths, 0, 4, b, "adam")
  assert [p["flops"] for p in curves["conventional"]] == [steps * conv_step,
                                                          2 * steps * conv_step]
  seq = curves["pnn-sequential"]
  seg0 = 2 * steps * F.step_flops(widths, 0, 2, b, "adam")
  handover = n * F.forward_flops(widths, 0, 2)
  assert seq[1]["flops"] == seg0
  assert seq[-1]["flops"] == seg0 + handover + 2 * steps * F.step_flops(widths, 2, 4, b, "adam")
  rec = curves["pnn-sequential+recovery"]
  recovery_batch = problem.config.recovery.batch_size
  assert rec[-1]["flops"] == seq[-1]["flops"] + (n // recovery_batch) * F.step_flops(
      widths, 0, 4, recovery_batch, "adam")
  assert all(p["seconds"] > 0 for p in seq)


def test_time_to_accuracy_on_a_real_document(compared):
  _, _, document = compared
  summary = C.time_to_accuracy(document)
  conv = summary["methods"]["conventional"]
  assert conv["reached"] and conv["flops_reduction_pct"] == 0.0
  assert summary["target_accuracy"] == pytest.approx(0.9 * conv["final_accuracy"])
  table = C.format_time_to_accuracy(summary)
  rows = [line.split(" | ")[0] for line in table.splitlines()[4:]]
  assert rows == ["| conventional", "| pnn-sequential", "| pnn-sequential+recovery",
                  "| pnn-parallel"]


def _doc(runs):
  return {"dataset": {"num_features": 4, "num_classes": 2, "num_train": 100},
          "config": {"model": {"hidden": [4, 4, 4]}}, "runs": runs}


def _loop(layers, objective="inputs -> labels", batch=10):
  return {"layers": layers, "objective": objective, "batch_size": batch, "optimizer": "sgd"}


def test_time_to_accuracy_headline_arithmetic():
  widths = (4, 4, 4, 4, 2)
  conv_step = F.step_flops(widths, 0, 4, 10, "sgd")
  conventional = {"method": "conventional", "test_accuracy": 0.8, "wall_seconds": 3.0,
                  "segments": [_loop([0, 4])],
                  "curve": [{"epoch": e, "seconds": float(e), "examples": [100 * e],
                             "accuracy": a} for e, a in ((1, 0.5), (2, 0.75), (3, 0.8))]}
  parallel = {"method": "pnn-parallel", "test_accuracy": 0.78, "wall_seconds": 1.0,
              "segments": [_loop([0, 2], "inputs -> sil"), _loop([2, 4], "sil+noise -> labels")],
              "curve": [{"epoch": 1, "seconds": 0.5, "examples": [100, 100], "accuracy": 0.6},
                        {"epoch": 2, "seconds": 1.0, "examples": [200, 200], "accuracy": 0.74}]}
  never = {"method": "pnn-sequential", "test_accuracy": 0.1, "wall_seconds": 1.0,
           "segments": [_loop([0, 2], "inputs -> sil"),
                        _loop([2, 4], "activations -> labels")],
           "curve": [{"epoch": 1, "seconds": 0.5, "examples": [100]},
                     {"epoch": 1, "seconds": 0.7, "examples": [100, 100], "accuracy": 0.1}]}
  summary = C.time_to_accuracy(_doc([conventional, parallel, never]))
  assert summary["target_accuracy"] == pytest.approx(0.72)
  conv = summary["methods"]["conventional"]
  assert (conv["epoch"], conv["flops"], conv["seconds"]) == (2, 20 * conv_step, 2.0)
  par = summary["methods"]["pnn-parallel"]
  par_flops = 20 * (F.step_flops(widths, 0, 2, 10, "sgd") + F.step_flops(widths, 2, 4, 10, "sgd"))
  assert par["flops"] == par_flops
  assert par["flops_reduction_pct"] == pytest.approx(100 * (1 - par_flops / (20 * conv_step)))
  assert par["seconds_reduction_pct"] == pytest.approx(50.0)
  seq = summary["methods"]["pnn-sequential"]
  assert not seq["reached"] and seq["flops_reduction_pct"] is None
  # The sequential hand-over: segment 0's forward over the 100 training examples, once.
  seq_curve = C.accuracy_curve(never, widths, 100)
  assert seq_curve[1]["flops"] - seq_curve[0]["flops"] == (
      10 * F.step_flops(widths, 2, 4, 10, "sgd") + 100 * F.forward_flops(widths, 0, 2))


def test_memory_report_per_method_and_device():
  problem = P.make_problem(tiny_config(**{"model.hidden": [64, 64, 64], "recovery.epochs": 0}),
                           tiny_dataset(num_train=512), jax.devices()[:2])
  report = B.memory_report(problem)
  assert set(report) == {"conventional", "pnn-sequential", "pnn-sequential hand-over",
                         "pnn-parallel", "model-parallel-stepwise"}
  n = len(problem.train_y)
  conv = report["conventional"]["devices"][0]["functions"]["epoch"]
  assert conv["data"] == n * 16 + n * 4  # uint8 pixels [n, 16] and int32 labels
  assert conv["peak"] - conv["peak_without_data"] == conv["data"]
  params = F.num_params(problem.widths, 0, 4) * 4
  assert conv["peak_without_data"] >= 3 * params  # params and Adam's two moments
  for method in ("pnn-parallel", "model-parallel-stepwise"):
    devices = report[method]["devices"]
    assert [d["segment"] for d in devices] == [0, 1]
    assert max(d["peak_without_data"] for d in devices) < conv["peak_without_data"]
  # The sequential hand-over holds the training set's cut activations on segment 0's device.
  features = report["pnn-sequential hand-over"]["devices"][0]["functions"]["features"]
  assert features["data"] >= n * 64 * 4
  ratios = B.memory_ratios(report)
  assert ratios["conventional"]["ratio"] == 1.0
  assert ratios["pnn-parallel"]["ratio_without_data"] < 1.0
  assert isinstance(ratios["pnn-parallel"]["met"], bool)


def test_device_memory_is_none_on_cpu():
  assert M.device_memory(jax.devices()[0]) is None
