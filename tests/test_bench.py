
import jax
import jax.numpy as jnp
import numpy as np

from synthpart import bench, rundir
from synthpart.cli import main
from synthpart.model import whole_network
from synthpart.optim import make_optimizer
from synthpart.progress import Progress
from synthpart.train import problem as P
from synthpart.train import schedules as S
from synthpart.train import segments
from synthpart.train.epoch import TrainState, make_epoch
from synthpart.train.objectives import Constants, make_loss

from tiny import tiny_config, tiny_dataset


def test_bench_rejects_unknown_loops(capsys):
  assert main(["bench", "paper", "--loops", "conventional,pipeline"]) == 2
  assert "--loops" in capsys.readouterr().err


def test_memory_table():
  methods = {"conventional": {"devices": [{"peak": 2e6, "peak_without_data": 1e6}],
                              "peak": 2e6, "peak_without_data": 1e6},
             "pnn-parallel": {"devices": [{"peak": 1.5e6, "peak_without_data": 0.5e6},
                                          {"peak": 0.4e6, "peak_without_data": 0.4e6}],
                              "peak": 1.5e6, "peak_without_data": 0.5e6}}
  lines = bench.format_memory({"methods": methods, "ratios": bench.memory_ratios(methods)})
  assert lines[-1] == "| pnn-parallel | 1.5 (0.5), 0.4 (0.4) | 1.5 | 0.5 | 0.750 | 0.500 | yes |"


def test_suites_shrink_on_cpu_only():
  wide = bench.SUITES["wide"]
  assert wide.size("gpu", full=False).hidden == (4096,) * 5
  assert wide.size("cpu", full=False).hidden[0] < 4096
  assert wide.size("cpu", full=True) == wide.accelerator
  assert bench.SUITES["paper"].size("cpu", False).hidden == (512,) * 5


def test_mixed_precision_trains_with_f32_master_weights():
  config = tiny_config(**{"model.dtype": "bfloat16", "model.param_dtype": "float32",
                          "train.epochs": 4})
  problem = P.make_problem(config, tiny_dataset(), jax.devices()[:2])
  (params,), result = S.train_conventional(problem, Progress(quiet=True))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
  losses = result.segments[0].loss_per_epoch
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  assert result.test_accuracy > 0.5
  # The matmuls really run in bf16: the compiled step multiplies bf16 operands.
  whole = whole_network(problem.specs)
  task = segments.segment_task(problem, whole, "pixels")
  optimizer = make_optimizer(config.train)
  state = jax.jit(lambda p: TrainState(p, optimizer.init(p)))(params)
  data = {"x": jnp.asarray(problem.train_x), "y": jnp.asarray(problem.train_y)}
  epoch = make_epoch(make_loss(task), optimizer, 32, len(problem.train_y))
  hlo = epoch.lower(state, data, Constants(), jax.random.key(0), jnp.uint32(0)).as_text()
  assert "bf16" in hlo and "dot_general" in hlo


def test_mixed_precision_bench_suite_runs():
  suite = bench.SUITES["wide"]
  size = bench.Size((16,) * 5, 32, 2)
  problem = P.make_problem(bench.suite_config(suite, size), bench.synthetic_dataset(64),
                           jax.devices()[:2])
  assert problem.config.model.dtype == "bfloat16"
  loops = bench.run_suite(suite, size, problem, repeats=1, kinds=("conventional",))
  assert [loop["loop"] for loop in loops] == ["conventional"]
  assert loops[0]["samples_per_s"] > 0


def test_bench_claims_its_out_before_it_runs(tmp_path, capsys, monkeypatch):
  def ran(*args, **kwargs):
    raise AssertionError("the benchmark ran")

  monkeypatch.setattr("synthpart.bench.command.run_suite", ran)
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text("{}")
  (run / "results.json").write_text("{}")
  (tmp_path / "afile").write_text("mine")
  earlier = tmp_path / "earlier"
  earlier.mkdir()
  (earlier / "bench.json").write_text('{"earlier": 1}')
  for out, words in [(run, "another command's directory"), (tmp_path / "afile",
                                                             "not a directory"),
                     (run / "sub", "lies inside"), (earlier, "earlier benchmark")]:
    assert main(["bench", "paper", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
  assert sorted(p.name for p in run.iterdir()) == ["config.json", "results.json"]
  assert (tmp_path / "afile").read_text() == "mine"
  assert (earlier / "bench.json").read_text() == '{"earlier": 1}'
  assert "bench.json" in rundir.DIR_KINDS["bench"]
