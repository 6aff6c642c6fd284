"""Fixtures for the data tests: an isolated environment and tiny datasets in the real layouts."""

from __future__ import annotations

import dataclasses
import gzip
import http.server
import io
import re
import tarfile
import threading
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from synthpart.data import download, idx, sources
from synthpart.data.catalog import CIFAR100, DatasetSpec, get_spec, idx_filenames


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
  """Points every search root into tmp_path, so no test sees the machine's own datasets."""
  monkeypatch.setenv("SYNTHPART_DATA", str(tmp_path / "cache"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  monkeypatch.delenv("SYNTHPART_MIRROR", raising=False)
  monkeypatch.setattr(sources, "SYSTEM_ROOT", tmp_path / "system")
  return tmp_path


@pytest.fixture(autouse=True)
def no_retry_waits(monkeypatch):
  """Retries of downloads follow at once (tests that time the waits pass `backoff`)."""
  monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.0)


def fake_split(spec: DatasetSpec, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """n random upright images uint8 [n, H, W, C] and labels int32 [n] covering every class."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, *spec.image_shape), dtype=np.uint8)
  labels = (np.arange(n) % spec.num_classes).astype(np.int32)
  return images, labels


@dataclasses.dataclass
class Fake:
  """A tiny dataset's arrays as `load_dataset` should return them."""
  spec: DatasetSpec
  train: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray]


def make_fake(name: str, n_train: int = 12, n_test: int = 7) -> Fake:
  spec = get_spec(name)
  return Fake(spec, fake_split(spec, n_train, 1), fake_split(spec, n_test, 2))


def stored_idx(fake: Fake) -> dict[str, np.ndarray]:
  """The arrays as they are stored in IDX files: EMNIST transposed, letters labelled 1..26."""
  out = {}
  for split, (images, labels) in (("train", fake.train), ("test", fake.test)):
    images = images[..., 0]
    if fake.spec.transposed:
      images = images.transpose(0, 2, 1)
    out[f"{split}_images"] = images
    out[f"{split}_labels"] = (labels + fake.spec.label_offset).astype(np.uint8)
  return out


def write_idx_files(fake: Fake, directory: Path, *, gz: bool = True) -> Path:
  """Writes `fake` as IDX files under their original names."""
  directory.mkdir(parents=True, exist_ok=True)
  names = idx_filenames(fake.spec)
  for role, array in stored_idx(fake).items():
    idx.write_idx(directory / (names[role] + (".gz" if gz else "")), array)
  return directory


def write_emnist_zip(fakes: list[Fake], path: Path, *, skip: str | None = None) -> Path:
  """Writes a zip laid out like NIST's gzip.zip holding the given EMNIST splits."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(path, "w") as archive:
    for fake in fakes:
      names = idx_filenames(fake.spec)
      for role, array in stored_idx(fake).items():
        member = f"gzip/{names[role]}.gz"
        if member != skip:
          archive.writestr(member, gzip.compress(idx.idx_bytes(array), mtime=0))
  return path


def cifar_bytes(fake_split_arrays: tuple[np.ndarray, np.ndarray], spec: DatasetSpec) -> bytes:
  """CIFAR binary records: [coarse,] label, then the image channel-major."""
  images, labels = fake_split_arrays
  chw = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
  label_cols = [labels // 5, labels] if spec.layout == CIFAR100 else [labels]
  return np.concatenate([np.stack(label_cols, 1).astype(np.uint8), chw], 1).tobytes()


def cifar_files(fake: Fake) -> dict[str, bytes]:
  """Member path -> bytes, as in CIFAR's binary archives."""
  if fake.spec.layout == CIFAR100:
    return {"cifar-100-binary/train.bin": cifar_bytes(fake.train, fake.spec),
            "cifar-100-binary/test.bin": cifar_bytes(fake.test, fake.spec),
            "cifar-100-binary/fine_label_names.txt": b"apple\n"}
  images, labels = fake.train
  batches = np.array_split(np.arange(len(labels)), 5)
  files = {f"cifar-10-batches-bin/data_batch_{i + 1}.bin":
           cifar_bytes((images[b], labels[b]), fake.spec) for i, b in enumerate(batches)}
  files["cifar-10-batches-bin/test_batch.bin"] = cifar_bytes(fake.test, fake.spec)
  files["cifar-10-batches-bin/batches.meta.txt"] = b"airplane\n"
  return files


def write_tar_gz(files: dict[str, bytes], path: Path) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(path, "w:gz") as archive:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  return path


def assert_loaded(ds, fake: Fake) -> None:
  """`ds` holds exactly `fake`'s arrays, with the documented dtypes."""
  assert ds.name == fake.spec.name
  assert ds.num_classes == fake.spec.num_classes
  for got, want in ((ds.train_images, fake.train[0]), (ds.test_images, fake.test[0])):
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
  for got, want in ((ds.train_labels, fake.train[1]), (ds.test_labels, fake.test[1])):
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


@dataclasses.dataclass
class ServerState:
  """What the test HTTP server serves and how it misbehaves."""
  files: dict[str, bytes] = dataclasses.field(default_factory=dict)
  ranges: bool = True                     # honour Range requests
  cut: dict[str, int] = dataclasses.field(default_factory=dict)  # responses to cut short
  requests: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"

  def do_GET(self):  # noqa: N802  (the name http.server calls)
    state: ServerState = self.server.state
    name = self.path.lstrip("/")
    header = self.headers.get("Range")
    state.requests.append((name, header))
    if name not in state.files:
      self.send_error(404)
      return
    data = state.files[name]
    start = 0
    if header and state.ranges:
      start = int(re.fullmatch(r"bytes=(\d+)-", header).group(1))
      if start >= len(data):
        self.send_response(416)
        self.send_header("Content-Range", f"bytes */{len(data)}")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return
      self.send_response(206)
      self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    else:
      self.send_response(200)
    body = data[start:]
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if state.cut.get(name, 0) > 0:
      # Announce the whole body, send half, hang up: an interrupted transfer.
      state.cut[name] -= 1
      self.wfile.write(body[:len(body) // 2])
      self.wfile.flush()
      self.close_connection = True
      return
    self.wfile.write(body)

  def log_message(self, *args):
    pass


@pytest.fixture
def http_server():
  """A local HTTP server on 127.0.0.1; yields (base URL, ServerState)."""
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  server.daemon_threads = True
  server.state = ServerState()
  thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}", server.state
  finally:
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def fakes():
  """The helpers above, for test modules (conftest itself is not importable by name)."""
  return types.SimpleNamespace(
      make=make_fake, stored_idx=stored_idx, write_idx_files=write_idx_files,
      write_emnist_zip=write_emnist_zip, cifar_files=cifar_files, write_tar_gz=write_tar_gz,
      assert_loaded=assert_loaded)
