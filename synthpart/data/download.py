"""Fetching published files over HTTP(S) with urllib: resume, retry, checksum, atomic rename.

A file is streamed into `<name>.part`, which is renamed to `<name>` only once complete and
verified, so a file under its final name is always whole. An interrupted transfer leaves the
`.part` behind; the next attempt asks the server for the rest with an HTTP Range request and
starts over if the server ignores it. A checksum or size mismatch deletes the `.part`.

Failures that may pass (an interrupted transfer, a timeout, a reset connection, HTTP 408, 429 or
5xx) are retried after waits that double from `RETRY_BACKOFF_S` up to `RETRY_BACKOFF_MAX_S`;
others (HTTP 404, a refused connection, an unknown host) fail at once. `fetch_any` tries a file's
URLs in turn and, if all fail, names every one with its reason.

`SYNTHPART_MIRROR` (an http(s) base URL; anything else is refused) replaces the published URLs:
a file is then fetched from
`$SYNTHPART_MIRROR/<file name>`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from synthpart.errors import ConfigError, DataError

MIRROR_ENV = "SYNTHPART_MIRROR"
# Seconds before the first retry; each further wait doubles, up to the maximum.
RETRY_BACKOFF_S = 1.0
RETRY_BACKOFF_MAX_S = 30.0
_CHUNK = 1 << 20


class DownloadError(DataError):
  """A download from `url` failed for `reason`; str() is the whole one-line message."""

  def __init__(self, message: str, url: str, reason: str):
    super().__init__(message, url, reason)
    self.message, self.url, self.reason = message, url, reason

  def __str__(self) -> str:
    return self.message


def backoff_delays(attempts: int, base: float, most: float) -> list[float]:
  """The waits before attempts 2..`attempts`: base, 2 base, 4 base, ..., none above `most`."""
  return [min(most, base * 2**i) for i in range(max(attempts - 1, 0))]


def _transient(error: BaseException) -> bool:
  """Whether a failed request may succeed if made again a little later."""
  if isinstance(error, urllib.error.HTTPError):
    return error.code in (408, 429) or error.code >= 500
  why = getattr(error, "reason", error)
  return isinstance(why, (TimeoutError, ConnectionResetError, ConnectionAbortedError))


def _one_line(text: object) -> str:
  return " ".join(str(text).split())


def urls_for(filename: str, urls: Sequence[str], mirror: str | None = None) -> tuple[str, ...]:
  """The URLs to try for a file: the mirror's alone when one is set (argument, else env).

  Raises:
    ConfigError: the mirror is not an http(s) URL with a host (it names SYNTHPART_MIRROR where
      the environment set it); other schemes are refused, not tried.
  """
  where = "mirror" if mirror is not None else MIRROR_ENV
  mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
  if mirror:
    parts = urllib.parse.urlsplit(mirror.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
      raise ConfigError(f"{where} must be an http:// or https:// URL with a host, got "
                        f"{mirror!r}")
    return (f"{mirror.rstrip('/')}/{filename}",)
  return tuple(urls)


def file_sha256(path: str | os.PathLike) -> str:
  """sha256 of a file, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


class _Interrupted(Exception):
  """A transfer stopped early; the `.part` keeps what arrived."""


def _open(url: str, offset: int, timeout: float):
  headers = {"User-Agent": "synthpart"}
  if offset:
    headers["Range"] = f"bytes={offset}-"
  return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _resumes_at(response, offset: int) -> bool:
  """Whether a response continues the `.part` at `offset` (a 206 for exactly that range)."""
  if not offset or response.status != 206:
    return False
  match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
  return match is not None and int(match.group(1)) == offset


def _transfer(url: str, part: Path, size: int | None, timeout: float, progress: bool,
              label: str) -> None:
  """One request: appends to `part` (or rewrites it) until the response ends.

  Raises:
    _Interrupted: the connection dropped or delivered fewer bytes than announced.
    urllib.error.URLError: the request failed before any data arrived.
  """
  from tqdm.auto import tqdm

  offset = part.stat().st_size if part.exists() else 0
  if size is not None and offset >= size:
    offset = 0  # Too long (or complete but unverified): fetch it whole again.
  try:
    response = _open(url, offset, timeout)
  except urllib.error.HTTPError as e:
    if e.code == 416 and offset:
      # The server cannot serve past the end: the .part is stale. Start clean next time.
      part.unlink(missing_ok=True)
      raise _Interrupted(f"HTTP 416 for a resumed range at byte {offset}") from None
    raise
  with response:
    resume = _resumes_at(response, offset)
    start = offset if resume else 0
    announced = response.headers.get("Content-Length")
    expected = start + int(announced) if announced and announced.isdigit() else size
    received = start
    with open(part, "ab" if resume else "wb") as out, tqdm(
        total=expected, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
        desc=label, disable=not progress, leave=False) as bar:
      while True:
        try:
          chunk = response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as e:
          raise _Interrupted(f"connection dropped after {received} bytes ({e!r})") from None
        if not chunk:
          break
        try:
          out.write(chunk)
        except OSError as e:
          raise DataError(f"{part}: cannot write ({e.strerror or e})") from None
        received += len(chunk)
        bar.update(len(chunk))
      out.flush()
      os.fsync(out.fileno())
  if expected is not None and received < expected:
    raise _Interrupted(f"got {received} of {expected} bytes")


def fetch(url: str, dest: Path, *, size: int | None = None, sha256: str | None = None,
          progress: bool = True, attempts: int = 4, timeout: float = 60.0,
          backoff: float | None = None) -> Path:
  """Downloads `url` to `dest` through `dest.part`, resuming and verifying.

  Args:
    url: http(s) URL.
    dest: final path; its directory is created.
    size: expected size in bytes, or None if unknown.
    sha256: expected hex digest, or None if unknown (then only `size` is checked).
    progress: show a tqdm progress bar on stderr.
    attempts: requests to make while failures may pass (see the module docstring).
    timeout: socket timeout in seconds.
    backoff: seconds before the first retry, doubling up to RETRY_BACKOFF_MAX_S; None for
      RETRY_BACKOFF_S.

  Returns:
    `dest`, complete and verified.

  Raises:
    DownloadError: the server cannot be reached or refuses, the transfer keeps failing, or the
      result has the wrong size or checksum (the `.part` is then deleted).
    DataError: `dest` cannot be written.
  """
  dest = Path(dest)
  part = dest.with_name(dest.name + ".part")
  try:
    dest.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DataError(f"{dest.parent}: cannot create directory ({e.strerror or e})") from None
  delays = iter(backoff_delays(attempts, RETRY_BACKOFF_S if backoff is None else backoff,
                               RETRY_BACKOFF_MAX_S))
  restarted = False
  reason = ""
  for attempt in range(attempts):
    resumed = part.exists() and part.stat().st_size > 0
    try:
      _transfer(url, part, size, timeout, progress, dest.name)
    except _Interrupted as e:
      reason = str(e)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
      if isinstance(e, urllib.error.HTTPError):
        reason = f"HTTP {e.code} {_one_line(e.reason)}"
      else:
        reason = f"cannot connect ({_one_line(getattr(e, 'reason', None) or e)})"
      if not _transient(e):
        raise DownloadError(f"{url}: {reason}", url, reason) from None
    else:
      problem = _check(part, size, sha256)
      if problem is None:
        os.replace(part, dest)
        return dest
      part.unlink(missing_ok=True)
      if not (resumed and not restarted):
        reason = f"{problem}; the download was discarded"
        raise DownloadError(f"{dest.name}: {problem} from {url}; the download was discarded",
                            url, reason)
      # The bytes kept from an earlier attempt may be what is wrong: try once from scratch.
      restarted = True
      continue
    if attempt + 1 < attempts:
      time.sleep(next(delays))
  kept = part.exists() and part.stat().st_size > 0
  then = f"run again to resume from {part}" if kept else "run again later"
  reason = f"kept failing after {attempts} attempts ({reason}); {then}"
  raise DownloadError(f"{url}: download {reason}", url, reason)


def fetch_any(urls: Sequence[str], dest: Path, **kwargs) -> Path:
  """Downloads `dest` from the first of `urls` that works; `kwargs` are `fetch`'s.

  Returns:
    `dest`, complete and verified.

  Raises:
    DataError: every URL failed: `fetch`'s error for a single URL, else one line naming each URL
      with its reason; or `dest` cannot be written.
  """
  failures: list[DownloadError] = []
  for url in urls:
    try:
      return fetch(url, dest, **kwargs)
    except DownloadError as e:
      failures.append(e)
  if not failures:
    raise DataError(f"{Path(dest).name}: no URL to download it from")
  if len(failures) == 1:
    raise failures[0]
  tried = "; ".join(f"{e.url} ({_one_line(e.reason)})" for e in failures)
  raise DataError(f"{Path(dest).name}: every URL failed: {tried}")


def _check(path: Path, size: int | None, sha256: str | None) -> str | None:
  """None if `path` has the expected size and sha256, else what is wrong."""
  actual_size = path.stat().st_size
  if size is not None and actual_size != size:
    return f"size mismatch: got {actual_size} bytes, expected {size}"
  if sha256 is not None:
    actual = file_sha256(path)
    if actual != sha256.lower():
      return f"sha256 mismatch: got {actual}, expected {sha256.lower()}"
  return None
