"""One registry of schedules, read by validation, compare, train, launch and --help; and the
backend every loop trained with, as each loop record says."""

from __future__ import annotations

import jax
import pytest

from synthpart import config as config_lib
from synthpart import experiment as exp
from synthpart.errors import ConfigError
from synthpart.prepare import SETTING_FLAGS
from synthpart.progress import Progress
from synthpart.schedule import METHODS, SCHEDULES
from synthpart.sweep.run import Job, check_jobs
from synthpart.train import problem as P
from synthpart.train import schedules as S

from commands import synthpart
from tiny import tiny_config, tiny_dataset

QUIET = Progress(quiet=True)
PMAP_GROUPS = {"placement.backend": "pmap", "placement.devices_per_segment": 2}


def test_every_schedule_has_its_trainer_and_methods_and_flag():
  assert list(S.TRAINERS) == list(SCHEDULES.names)
  for schedule in SCHEDULES.values():
    assert schedule.method in METHODS and f"{schedule.method}+recovery" in METHODS
    assert schedule.name in SETTING_FLAGS["--schedule"][1]  # --help lists it
  with pytest.raises(ConfigError, match="schedule = 'zigzag' is not one of sequential, "
                     "parallel, pipelined"):
    config_lib.load(overrides={"schedule": "zigzag"})


def test_compare_refuses_pmap_groups_before_anything_trains():
  config = config_lib.load(overrides=PMAP_GROUPS)  # the sequential schedule: accepted
  with pytest.raises(ConfigError, match="the pipelined schedule runs them in chunks: use "
                     r"placement.backend = sharding \(compare trains every schedule\)"):
    exp.check_compare(config)
  exp.check_compare(config_lib.load(overrides={"placement.backend": "pmap"}))  # no groups


def test_compare_with_pmap_groups_is_one_line_and_writes_nothing(tmp_path):
  out = tmp_path / "run"
  proc = synthpart("compare", "--set", "placement.backend=pmap", "--set",
                   "placement.devices_per_segment=2", "--devices", "4", "-q", "--out", str(out),
                   env={"JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert lines == ["synthpart: error: placement.backend = pmap runs whole epochs, and the "
                   "pipelined schedule runs them in chunks: use placement.backend = sharding "
                   "(compare trains every schedule)"]
  assert not (out / "results.json").exists()


@pytest.mark.parametrize("settings, backend", [(PMAP_GROUPS, "pmap"),
                                               ({"placement.devices_per_segment": 2},
                                                "sharding"),
                                               ({"placement.backend": "pmap"}, "sharding")])
def test_each_loop_record_names_the_backend_it_trained_with(settings, backend):
  config = tiny_config(**{"train.epochs": 1, "recovery.epochs": 0, **settings})
  problem = P.make_problem(config, tiny_dataset(), jax.devices())
  _, record = S.train_parallel(problem, QUIET, track_accuracy=False)
  assert [s.backend for s in record.segments] == [backend] * len(record.segments)
  assert all(s["backend"] == backend for s in record.to_dict()["segments"])


def test_a_sweep_refuses_pmap_groups_for_a_compare_job_before_anything_is_written():
  config = config_lib.load(overrides=PMAP_GROUPS)
  check_jobs([Job("seq", config, "train"), Job("two", config, "schedules", ("parallel",))])
  with pytest.raises(ConfigError, match=r"^cmp: placement.backend = pmap runs whole epochs, and "
                     "the pipelined schedule"):
    check_jobs([Job("seq", config, "train"), Job("cmp", config, "compare")])
