"""Downloads from a local HTTP server: success, resume, retry, checksum mismatch, offline."""

import dataclasses
import gzip
import hashlib
import http.server
import os
import socket
import threading
import types

import pytest

from synthpart.data import download, idx, load_dataset, sources
from synthpart.data.catalog import Remote, get_spec
from synthpart.errors import ConfigError, DataError

PAYLOAD = bytes(range(256)) * 400  # 100 kB: several reads, so an interruption is mid-file


def _sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def test_fetch_verifies_and_renames(tmp_path, http_server):
  url, state = http_server
  state.files["f.bin"] = PAYLOAD
  dest = download.fetch(f"{url}/f.bin", tmp_path / "sub" / "f.bin", size=len(PAYLOAD),
                        sha256=_sha(PAYLOAD), progress=True)
  assert dest.read_bytes() == PAYLOAD
  assert os.listdir(tmp_path / "sub") == ["f.bin"]


def test_interrupted_download_resumes_with_range(tmp_path, http_server):
  url, state = http_server
  state.files["f.bin"] = PAYLOAD
  state.cut["f.bin"] = 1
  dest = download.fetch(f"{url}/f.bin", tmp_path / "f.bin", size=len(PAYLOAD),
                        sha256=_sha(PAYLOAD), progress=False)
  assert dest.read_bytes() == PAYLOAD
  assert state.requests == [("f.bin", None), ("f.bin", f"bytes={len(PAYLOAD) // 2}-")]


def test_part_left_by_an_earlier_run_is_resumed(tmp_path, http_server):
  url, state = http_server
  state.files["f.bin"] = PAYLOAD
  (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
  download.fetch(f"{url}/f.bin", tmp_path / "f.bin", sha256=_sha(PAYLOAD), progress=False)
  assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
  assert state.requests == [("f.bin", "bytes=1000-")]
  assert not (tmp_path / "f.bin.part").exists()


def test_server_without_ranges_gets_a_clean_retry(tmp_path, http_server):
  url, state = http_server
  state.files["f.bin"] = PAYLOAD
  state.ranges = False
  state.cut["f.bin"] = 2
  dest = download.fetch(f"{url}/f.bin", tmp_path / "f.bin", size=len(PAYLOAD),
                        sha256=_sha(PAYLOAD), progress=False)
  assert dest.read_bytes() == PAYLOAD
  assert len(state.requests) == 3  # two cut short, then whole; each answered from byte 0


def test_corrupt_part_is_discarded_and_fetched_again(tmp_path, http_server):
  url, state = http_server
  state.files["f.bin"] = PAYLOAD
  (tmp_path / "f.bin.part").write_bytes(b"\xff" * 1000)  # not a prefix of the file
  download.fetch(f"{url}/f.bin", tmp_path / "f.bin", sha256=_sha(PAYLOAD), progress=False)
  assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
  assert state.requests == [("f.bin", "bytes=1000-"), ("f.bin", None)]


def test_part_as_long_as_the_file_hits_416_then_restarts(tmp_path, http_server):
  url, state = http_server
  state.files["f.bin"] = PAYLOAD
  (tmp_path / "f.bin.part").write_bytes(b"\x00" * len(PAYLOAD))
  download.fetch(f"{url}/f.bin", tmp_path / "f.bin", sha256=_sha(PAYLOAD), progress=False)
  assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_no_file(tmp_path, http_server):
  url, state = http_server
  state.files["f.bin"] = PAYLOAD
  with pytest.raises(DataError, match=r"f\.bin: sha256 mismatch: got .* expected 0{64} from "
                     r"http://127\.0\.0\.1:\d+/f\.bin; the download was discarded"):
    download.fetch(f"{url}/f.bin", tmp_path / "f.bin", sha256="0" * 64, progress=False)
  assert os.listdir(tmp_path) == []


def test_size_mismatch_leaves_no_file(tmp_path, http_server):
  url, state = http_server
  state.files["f.bin"] = PAYLOAD
  with pytest.raises(DataError, match="size mismatch"):
    download.fetch(f"{url}/f.bin", tmp_path / "f.bin", size=len(PAYLOAD) - 1, progress=False)
  assert os.listdir(tmp_path) == []


def test_interruptions_that_never_end_keep_the_part_for_later(tmp_path, http_server):
  url, state = http_server
  state.files["f.bin"] = PAYLOAD
  state.ranges = False
  state.cut["f.bin"] = 100
  with pytest.raises(DataError, match=r"kept failing after 2 attempts .*run again to resume"):
    download.fetch(f"{url}/f.bin", tmp_path / "f.bin", progress=False, attempts=2)
  assert os.listdir(tmp_path) == ["f.bin.part"]


def test_http_404(tmp_path, http_server):
  url, _ = http_server
  with pytest.raises(DataError, match=r"/nothing\.bin: HTTP 404"):
    download.fetch(f"{url}/nothing.bin", tmp_path / "n", progress=False)
  assert os.listdir(tmp_path) == []


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_offline_error_says_where_to_put_files(isolated, monkeypatch):
  monkeypatch.setenv("SYNTHPART_MIRROR", f"http://127.0.0.1:{_closed_port()}")
  with pytest.raises(DataError) as info:
    load_dataset("fashion-mnist", download=True, progress=False)
  message = str(info.value)
  assert "\n" not in message
  assert message.startswith("cannot download fashion-mnist: http://127.0.0.1:")
  assert "cannot connect" in message
  assert "if offline, put train-images-idx3-ubyte.gz" in message
  assert str(isolated / "cache" / "fashion-mnist") in message
  assert not any((isolated / "cache" / "fashion-mnist").iterdir())


def test_mirror_replaces_published_urls(monkeypatch):
  assert download.urls_for("a.gz", ("https://x/a.gz",), "http://m/") == ("http://m/a.gz",)
  monkeypatch.setenv("SYNTHPART_MIRROR", "http://env")
  assert download.urls_for("a.gz", ("https://x/a.gz",)) == ("http://env/a.gz",)
  monkeypatch.delenv("SYNTHPART_MIRROR")
  assert download.urls_for("a.gz", ("https://x/a.gz",)) == ("https://x/a.gz",)


def test_registry_checksums_reject_other_files(isolated, http_server, monkeypatch, fakes):
  """With the real registry, a mirror serving other bytes is refused and nothing is kept."""
  url, state = http_server
  for role, array in fakes.stored_idx(fakes.make("mnist")).items():
    name = {"train_images": "train-images-idx3-ubyte.gz", "train_labels":
            "train-labels-idx1-ubyte.gz", "test_images": "t10k-images-idx3-ubyte.gz",
            "test_labels": "t10k-labels-idx1-ubyte.gz"}[role]
    state.files[name] = gzip.compress(idx.idx_bytes(array))
  monkeypatch.setenv("SYNTHPART_MIRROR", url)
  with pytest.raises(DataError, match=r"cannot download mnist: train-images-idx3-ubyte\.gz: "
                     r"size mismatch: got \d+ bytes, expected 9912422"):
    load_dataset("mnist", download=True, progress=False)
  cache = isolated / "cache" / "mnist"
  assert list(cache.iterdir()) == []


def _served_spec(name, fakes, state):
  """`name`'s spec with remotes describing the tiny files put on the test server."""
  fake = fakes.make(name)
  spec = fake.spec
  remotes = []
  if spec.layout == "emnist":
    archive = fakes.write_emnist_zip([fake], sources.cache_root().parent / "src" / "gzip.zip")
    state.files["gzip.zip"] = archive.read_bytes()
    archive.unlink()
    remotes.append(Remote("gzip.zip", ("https://unused.invalid/gzip.zip",),
                          len(state.files["gzip.zip"]), _sha(state.files["gzip.zip"])))
  else:
    names = {"train_images": "train-images-idx3-ubyte.gz", "train_labels":
             "train-labels-idx1-ubyte.gz", "test_images": "t10k-images-idx3-ubyte.gz",
             "test_labels": "t10k-labels-idx1-ubyte.gz"}
    for role, array in fakes.stored_idx(fake).items():
      data = gzip.compress(idx.idx_bytes(array))
      state.files[names[role]] = data
      remotes.append(Remote(names[role], ("https://unused.invalid/x",), len(data), _sha(data)))
  return fake, dataclasses.replace(spec, remotes=tuple(remotes))


@pytest.mark.parametrize("name", ["fashion-mnist", "emnist-letters"])
def test_download_into_cache_then_load_offline(isolated, http_server, fakes, name):
  url, state = http_server
  fake, spec = _served_spec(name, fakes, state)
  state.cut[spec.remotes[0].filename] = 1
  with pytest.raises(DataError, match="not found"):
    sources.load_spec(spec)
  ds = sources.load_spec(spec, download=True, progress=False, mirror=url)
  fakes.assert_loaded(ds, fake)
  folder = "emnist" if name.startswith("emnist") else name
  assert ds.source.startswith(str(isolated / "cache" / folder))
  assert sorted(os.listdir(isolated / "cache" / folder)) == sorted(
      r.filename for r in spec.remotes)
  # Now cached: no further requests.
  served = len(state.requests)
  fakes.assert_loaded(sources.load_spec(spec, download=True, mirror=url), fake)
  assert len(state.requests) == served


def test_download_into_data_dir(tmp_path, http_server, fakes):
  url, state = http_server
  fake, spec = _served_spec("mnist", fakes, state)
  ds = sources.load_spec(spec, tmp_path / "mine", download=True, progress=False, mirror=url)
  fakes.assert_loaded(ds, fake)
  assert ds.source == str(tmp_path / "mine" / "mnist")


def test_download_skips_files_already_complete(isolated, http_server, fakes):
  url, state = http_server
  fake, spec = _served_spec("mnist", fakes, state)
  cache = isolated / "cache" / "mnist"
  cache.mkdir(parents=True)
  first = spec.remotes[0].filename
  (cache / first).write_bytes(state.files[first])
  sources.load_spec(spec, download=True, progress=False, mirror=url)
  assert first not in [name for name, _ in state.requests]


def test_digits_never_downloads():
  assert not get_spec("digits").downloadable


def test_backoff_doubles_up_to_its_maximum():
  assert download.backoff_delays(5, 1.0, 3.0) == [1.0, 2.0, 3.0, 3.0]
  assert download.backoff_delays(3, 0.0, 30.0) == [0.0, 0.0]
  assert download.backoff_delays(1, 1.0, 30.0) == []


@pytest.fixture
def waits(monkeypatch):
  """The waits `download` asks for, recorded instead of slept."""
  asked = []
  monkeypatch.setattr(download, "time", types.SimpleNamespace(sleep=asked.append))
  return asked


def test_interrupted_transfers_are_retried_after_growing_waits(tmp_path, http_server, waits):
  url, state = http_server
  state.files["f.bin"] = PAYLOAD
  state.ranges = False
  state.cut["f.bin"] = 3
  download.fetch(f"{url}/f.bin", tmp_path / "f.bin", sha256=_sha(PAYLOAD), progress=False,
                 attempts=4, backoff=0.5)
  assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
  assert waits == [0.5, 1.0, 2.0]


def test_default_backoff_is_settable(tmp_path, http_server, waits, monkeypatch):
  url, state = http_server
  state.files["f.bin"] = PAYLOAD
  state.ranges = False
  state.cut["f.bin"] = 100
  monkeypatch.setattr(download, "RETRY_BACKOFF_S", 4.0)
  monkeypatch.setattr(download, "RETRY_BACKOFF_MAX_S", 10.0)
  with pytest.raises(DataError, match="kept failing after 5 attempts"):
    download.fetch(f"{url}/f.bin", tmp_path / "f.bin", progress=False, attempts=5)
  assert waits == [4.0, 8.0, 10.0, 10.0]


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
  """Answers each request with the next status in `server.statuses` (200: PAYLOAD)."""
  protocol_version = "HTTP/1.1"

  def do_GET(self):  # the name http.server calls
    self.server.requests.append(self.path)
    status = self.server.statuses.pop(0) if self.server.statuses else 200
    body = PAYLOAD if status == 200 else b""
    self.send_response(status)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    pass


@pytest.fixture
def flaky_server():
  """A local HTTP server answering with the statuses listed in its `statuses`, then 200."""
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyHandler)
  server.daemon_threads = True
  server.statuses, server.requests = [], []
  thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}", server
  finally:
    server.shutdown()
    server.server_close()
    thread.join()


def test_server_errors_are_retried_with_backoff(tmp_path, flaky_server, waits):
  url, server = flaky_server
  server.statuses[:] = [503, 429, 500]
  download.fetch(f"{url}/f.bin", tmp_path / "f.bin", sha256=_sha(PAYLOAD), progress=False,
                 backoff=1.0)
  assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
  assert waits == [1.0, 2.0, 4.0] and len(server.requests) == 4


def test_server_errors_that_persist_are_reported(tmp_path, flaky_server, waits):
  url, server = flaky_server
  server.statuses[:] = [503] * 10
  with pytest.raises(DataError) as info:
    download.fetch(f"{url}/f.bin", tmp_path / "f.bin", progress=False, attempts=3)
  assert str(info.value) == (f"{url}/f.bin: download kept failing after 3 attempts (HTTP 503 "
                             "Service Unavailable); run again later")
  assert len(server.requests) == 3 and len(waits) == 2


def test_not_found_and_refused_are_not_retried(tmp_path, flaky_server, waits):
  url, server = flaky_server
  server.statuses[:] = [404]
  with pytest.raises(DataError, match=r"/f\.bin: HTTP 404 Not Found$"):
    download.fetch(f"{url}/f.bin", tmp_path / "f.bin", progress=False)
  with pytest.raises(DataError, match=r": cannot connect \(.*refused"):
    download.fetch(f"http://127.0.0.1:{_closed_port()}/f.bin", tmp_path / "f.bin",
                   progress=False)
  assert len(server.requests) == 1 and waits == []


def test_fetch_any_names_every_url_tried_with_its_reason(tmp_path, http_server, waits):
  url, state = http_server
  state.files["other.bin"] = b"not the payload"
  state.files["cut.bin"] = PAYLOAD
  state.ranges = False
  state.cut["cut.bin"] = 100
  refused = f"http://127.0.0.1:{_closed_port()}/f.bin"
  urls = [f"{url}/missing.bin", refused, f"{url}/other.bin", f"{url}/cut.bin"]
  with pytest.raises(DataError) as info:
    download.fetch_any(urls, tmp_path / "f.bin", sha256=_sha(PAYLOAD), progress=False,
                       attempts=2)
  message = str(info.value)
  assert "\n" not in message
  assert message.startswith(f"f.bin: every URL failed: {url}/missing.bin (HTTP 404 Not Found); "
                            f"{refused} (cannot connect (")
  assert f"; {url}/other.bin (sha256 mismatch: got {_sha(b'not the payload')}, expected " \
         f"{_sha(PAYLOAD)}; the download was discarded); {url}/cut.bin (kept failing after 2 " \
         "attempts (got " in message
  assert message.endswith(f"); run again to resume from {tmp_path / 'f.bin.part'})")
  assert [name for name, _ in state.requests] == ["missing.bin", "other.bin", "cut.bin",
                                                  "cut.bin"]


def test_fetch_any_stops_at_the_first_url_that_works(tmp_path, http_server):
  url, state = http_server
  state.files["f.bin"] = PAYLOAD
  urls = [f"{url}/missing.bin", f"{url}/f.bin", f"{url}/never.bin"]
  dest = download.fetch_any(urls, tmp_path / "f.bin", size=len(PAYLOAD), progress=False)
  assert dest.read_bytes() == PAYLOAD
  assert [name for name, _ in state.requests] == ["missing.bin", "f.bin"]


def test_fetch_any_with_one_url_gives_its_error(tmp_path, http_server):
  url, _ = http_server
  with pytest.raises(DataError) as info:
    download.fetch_any([f"{url}/missing.bin"], tmp_path / "f.bin", progress=False)
  assert str(info.value) == f"{url}/missing.bin: HTTP 404 Not Found"


def test_fetch_any_without_urls(tmp_path):
  with pytest.raises(DataError, match=r"^f\.bin: no URL to download it from$"):
    download.fetch_any([], tmp_path / "f.bin")


@pytest.mark.parametrize("mirror", ["not a url", "ftp://127.0.0.1:21", "http://", "file:///tmp"])
def test_a_mirror_that_is_not_an_http_url_is_one_line(isolated, monkeypatch, capsys, mirror):
  """Refused before any connection: no urllib error, no hang on a scheme urllib would try."""
  from synthpart.cli import main
  monkeypatch.setenv("SYNTHPART_MIRROR", mirror)
  assert main(["data", "download", "mnist"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "SYNTHPART_MIRROR must be an http:// or https:// URL" in err
  assert repr(mirror) in err
  with pytest.raises(ConfigError, match=r"^mirror must be an http"):
    download.urls_for("a.gz", ("https://x/a.gz",), mirror)
