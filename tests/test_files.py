"""Files a run writes are readable as the umask allows, like any file `open` creates."""

from __future__ import annotations

import os
import stat

import pytest

from synthpart.cli import main
from synthpart.files import default_mode, umask, write_atomic, write_json_atomic


@pytest.fixture
def mask(request):
  old = os.umask(request.param)
  yield request.param
  os.umask(old)


def _mode(path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077], indirect=True)
def test_atomic_writes_take_the_umask_mode(tmp_path, mask):
  assert umask() == mask and default_mode() == 0o666 & ~mask
  write_json_atomic(tmp_path / "a.json", {"x": 1})
  write_atomic(tmp_path / "b.bin", lambda f: f.write(b"1"))
  assert _mode(tmp_path / "a.json") == _mode(tmp_path / "b.bin") == 0o666 & ~mask


@pytest.mark.parametrize("mask", [0o027], indirect=True)
def test_a_run_directory_is_readable_by_the_group(tmp_path, mask):
  out = tmp_path / "run"
  assert main(["train", "--hidden", "8,8", "--cuts", "1", "--epochs", "1", "--recovery-epochs",
               "0", "--out", str(out), "-q"]) == 0
  files = [p for p in out.rglob("*") if p.is_file()]
  names = {p.name for p in files}
  assert {"results.json", "config.json", "log.txt", "_CHECKPOINT_METADATA"} <= names
  assert {str(p.relative_to(out)): oct(_mode(p)) for p in files if _mode(p) != 0o640} == {}
