"""The README's own-network example runs as written."""

import os
import pathlib
import re
import subprocess
import sys

from synthpart.progress import Progress
from synthpart.train import schedules as S
from synthpart.train.problem import make_problem

from tiny import tiny_config, tiny_dataset

README = pathlib.Path(__file__).parent.parent / "README.md"


def test_the_readme_factory_example_trains(tmp_path, monkeypatch):
  text = README.read_text()
  block = re.search(r"```python\n(# my_nets\.py.*?)```", text, re.S)
  assert block, "the README's my_nets.py example is missing"
  (tmp_path / "my_nets.py").write_text(block.group(1))
  monkeypatch.syspath_prepend(str(tmp_path))
  config = tiny_config(**{"model.factory": "my_nets:build", "model.cuts": [1],
                          "train.epochs": 1, "recovery.epochs": 0})
  problem = make_problem(config, tiny_dataset(num_train=64, num_test=16, shape=(28, 28, 1)))
  assert problem.shapes[1] == (14, 14, 32)
  _, result = S.train_sequential(problem, Progress(quiet=True))
  assert len(result.segments) == 2 and result.test_accuracy >= 0
  sys.modules.pop("my_nets", None)


def test_the_readme_library_quick_start_runs_from_anywhere(tmp_path):
  text = README.read_text()
  block = re.search(r"## As a library\n\n```python\n(.*?)```", text, re.S)
  assert block, "the README's library quick start is missing"
  code = block.group(1).replace('"fashion-mnist"', '"digits"').replace(
      '"train.epochs": 2', '"train.epochs": 1, "model.hidden": [16, 16, 16]')
  assert "digits" in code
  run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  accuracy = float(run.stdout.split()[0])
  assert 0.0 < accuracy <= 1.0
