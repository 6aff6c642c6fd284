"""The `synthpart data` commands, driven through a bare argparse parser."""

import argparse
import dataclasses
import gzip
import os

import pytest

from synthpart.data import command, idx, sources
from synthpart.data.catalog import get_spec, idx_filenames
from synthpart.errors import DataError

from commands import synthpart


def _run(argv):
  parser = argparse.ArgumentParser(prog="synthpart")
  command.add_data_commands(parser.add_subparsers(dest="command", required=True))
  args = parser.parse_args(argv)
  return args.func(args)


def test_list_shows_every_dataset_and_where_it_is(isolated, fakes, capsys):
  fakes.write_idx_files(fakes.make("mnist"), isolated / "cache" / "mnist")
  assert _run(["data", "list"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0].split() == ["NAME", "CLASSES", "SHAPE", "SOURCE"]
  rows = {line.split()[0]: line for line in out[1:]}
  assert set(rows) == set(command.REGISTRY)
  assert str(isolated / "cache" / "mnist") in rows["mnist"]
  assert "synthpart data download cifar100 (169 MB)" in rows["cifar100"]
  assert " 47 " in rows["emnist-balanced"] and "32x32x3" in rows["cifar10"]
  assert "(default)" in rows["digits"]


def test_list_with_data_dir(tmp_path, fakes, capsys):
  fakes.write_emnist_zip([fakes.make("emnist-letters")], tmp_path / "gzip.zip")
  assert _run(["data", "list", "--data-dir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert str(tmp_path / "gzip.zip") in out


def test_verify_passes_when_counts_match(tmp_path, fakes, capsys, monkeypatch):
  # Pretend the published counts are the fake's, so every content check can pass.
  spec = dataclasses.replace(command.get_spec("mnist"), train_count=20, test_count=10)
  monkeypatch.setattr(command, "get_spec", lambda name: spec)
  fakes.write_idx_files(fakes.make("mnist", n_train=20, n_test=10), tmp_path)
  assert _run(["data", "verify", "mnist", "--data-dir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "FAIL" not in out
  # Not the published .gz files, and MNIST's content hashes are not recorded: warnings only.
  assert out.count("\n  warn  ") == 4
  assert out.splitlines()[-1] == "mnist: ok (10 checks, 4 warnings)"


def test_verify_reports_wrong_counts_and_missing_classes(tmp_path, fakes, capsys):
  fakes.write_idx_files(fakes.make("mnist", n_train=5, n_test=3), tmp_path)
  assert _run(["data", "verify", "mnist", "--data-dir", str(tmp_path)]) == 1
  out = capsys.readouterr().out
  assert "FAIL  train count" in out and "5 (published: 60000)" in out
  assert "5 of 10 classes present" in out
  assert "warn" in out and "differs from the published file" in out
  assert "mnist: " in out.splitlines()[-1] and "checks failed" in out


def test_verify_reports_corrupt_files_as_failures(tmp_path, fakes, capsys):
  fakes.write_idx_files(fakes.make("mnist"), tmp_path)
  path = tmp_path / "t10k-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-9])
  assert _run(["data", "verify", "mnist", "--data-dir", str(tmp_path)]) == 1
  assert "truncated gzip data" in capsys.readouterr().out


def test_verify_checks_archive_checksum(tmp_path, fakes, capsys):
  fakes.write_tar_gz(fakes.cifar_files(fakes.make("cifar10")), tmp_path / "cifar-10-binary.tar.gz")
  assert _run(["data", "verify", "cifar10", "--data-dir", str(tmp_path)]) == 1
  assert "differs from the published c4a38c50" in capsys.readouterr().out


def test_verify_decompressed_content_checksum(tmp_path, fakes, capsys):
  fakes.write_idx_files(fakes.make("fashion-mnist"), tmp_path)
  assert _run(["data", "verify", "fashion-mnist", "--data-dir", str(tmp_path)]) == 1
  assert "decompressed data differs from the known data" in capsys.readouterr().out


def test_verify_real_fashion_mnist(capsys, monkeypatch):
  if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
    pytest.skip("/usr/share/datasets/fashion-mnist is absent")
  monkeypatch.setattr(sources, "SYSTEM_ROOT", sources.Path("/usr/share/datasets"))
  assert _run(["data", "verify", "fashion-mnist"]) == 0
  out = capsys.readouterr().out
  assert out.count("decompressed sha256 matches") == 4 and "fashion-mnist: ok" in out


def test_verify_unknown_or_missing_raise_data_error(isolated):
  with pytest.raises(DataError, match="unknown dataset 'nope'"):
    _run(["data", "verify", "nope"])
  with pytest.raises(DataError, match="cifar10: not found"):
    _run(["data", "verify", "cifar10"])


def test_download_command(isolated, http_server, fakes, capsys, monkeypatch):
  url, state = http_server
  monkeypatch.setenv("SYNTHPART_MIRROR", url)
  state.files["gzip.zip"] = b"not the real zip"
  with pytest.raises(DataError, match=r"size mismatch: got 16 bytes, expected 561753746"):
    _run(["data", "download", "emnist-letters", "--no-progress"])
  assert list((isolated / "cache" / "emnist").iterdir()) == []
  assert _run(["data", "download", "digits"]) == 0
  assert "nothing to download" in capsys.readouterr().out


def test_download_command_reports_existing_copy(isolated, fakes, capsys):
  fakes.write_idx_files(fakes.make("mnist"), isolated / "cache" / "mnist")
  assert _run(["data", "download", "mnist"]) == 0
  assert str(isolated / "cache" / "mnist") in capsys.readouterr().out


def test_data_without_subcommand_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as info:
    _run(["data"])
  assert info.value.code == 2


def test_commands_in_a_fresh_process(tmp_path, http_server, fakes):
  """`data list`, `data verify` and `data download` as a user runs them: a fresh process, whose
  own search roots (SYNTHPART_DATA, the mirror) come from its environment."""
  url, state = http_server
  names = idx_filenames(get_spec("mnist"))
  for role, array in fakes.stored_idx(fakes.make("mnist")).items():
    state.files[names[role] + ".gz"] = gzip.compress(idx.idx_bytes(array), mtime=0)
  env = {"SYNTHPART_DATA": str(tmp_path / "cache"), "TFDS_DATA_DIR": str(tmp_path / "tfds"),
         "SYNTHPART_MIRROR": url}
  listed = synthpart("data", "list", env=env)
  assert listed.returncode == 0, listed.stderr
  assert "(default)" in listed.stdout and "synthpart data download cifar100" in listed.stdout
  # The mirror serves files other than the published ones: refused by size, nothing kept.
  fetched = synthpart("data", "download", "mnist", "--no-progress", env=env)
  assert fetched.returncode == 2 and len(fetched.stderr.strip().splitlines()) == 1, fetched.stderr
  assert "mnist" in fetched.stderr
  assert not list((tmp_path / "cache").rglob("*-ubyte*"))
  fakes.write_idx_files(fakes.make("mnist", n_train=5, n_test=3), tmp_path / "mine")
  verified = synthpart("data", "verify", "mnist", "--data-dir", str(tmp_path / "mine"), env=env)
  assert verified.returncode == 1 and "FAIL  train count" in verified.stdout
