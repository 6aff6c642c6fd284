"""Before `jax.distributed` starts: process 0's coordinator port is free, and the other processes
can reach the coordinator, each within a bounded time and with one line where not.

jax's own failures here are not errors a program can catch: a coordinator that cannot bind its
port fails inside the runtime (or crashes), and a client that cannot reach the coordinator within
its `initialization_timeout` aborts the process (SIGABRT). So process 0 first binds the port
itself, as the coordinator will (every interface, `[::]:PORT`), and every other process first
waits for a coordinator to answer at the address: a gRPC server (HTTP/2) answers a client's
connection preface with a SETTINGS frame at once, which tells it apart from another program
listening on the port.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time

from synthpart.errors import ConfigError

COORDINATOR_TIMEOUT = 300.0  # seconds a process waits for the coordinator (jax's own default)
ANSWER_SECONDS = 5.0  # a coordinator answers at once; a listener silent this long is another
RETRY_SECONDS = 0.2
# An HTTP/2 client's connection preface, then an empty SETTINGS frame (RFC 9113, section 3.4).
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS = 4
HOW_TO_CHOOSE = "choose another port with --coordinator HOST:PORT (or $SYNTHPART_COORDINATOR)"


def split_address(address: str) -> tuple[str, int]:
  """(host, port) of a coordinator address HOST:PORT ([v6 address]:PORT too).

  Raises `ConfigError` where the port is not a number in 1..65535.
  """
  host, _, text = address.rpartition(":")
  try:
    port = int(text)
  except ValueError:
    port = -1
  if not host or not 1 <= port <= 65535:
    raise ConfigError(f"--coordinator must look like HOST:PORT with a port in 1..65535, got "
                      f"{address!r}")
  return host.removeprefix("[").removesuffix("]"), port


def _bind(port: int) -> None:
  """Binds `port` on every interface as the coordinator's server does (dual-stack where the
  host has IPv6), and lets go of it again."""
  try:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
  except OSError:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  with sock:
    if sock.family == socket.AF_INET6:
      with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    # As the server does: a port whose last connections linger in TIME_WAIT is free.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::" if sock.family == socket.AF_INET6 else "", port))
    sock.listen(1)


def check_port_free(address: str) -> None:
  """Process 0: raises `ConfigError` (naming the address and how to choose another port) where
  the coordinator could not listen on the port of `address`."""
  _, port = split_address(address)
  try:
    _bind(port)
  except OSError as e:
    why = ("is in use (by another program, or another launch's coordinator)"
           if e.errno == errno.EADDRINUSE else f"cannot be listened on ({e.strerror})")
    raise ConfigError(f"the coordinator port of {address} {why}; {HOW_TO_CHOOSE}") from None


def _answer(host: str, port: int, seconds: float) -> str | None:
  """None where a coordinator answers at (host, port); else why not: "refused" where nothing
  listens (yet), or what the listener did instead."""
  try:
    sock = socket.create_connection((host, port), timeout=seconds)
  except (ConnectionRefusedError, TimeoutError):
    return "refused"
  except OSError as e:
    if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET):
      return "refused"  # the host or its network may not be up yet: try again
    raise ConfigError(f"the coordinator at {host}:{port} cannot be reached: {e.strerror or e}; "
                      "check the host in --coordinator HOST:PORT") from None
  with sock:
    try:
      sock.sendall(_PREFACE)
      header = b""
      while len(header) < 9:
        chunk = sock.recv(9 - len(header))
        if not chunk:
          return "it closed the connection without answering"
        header += chunk
    except TimeoutError:
      return f"it has not answered in {seconds:g} s"
    except OSError as e:
      return f"the connection failed ({e.strerror or e})"
  return None if header[3] == _SETTINGS else "it answered in another protocol"


def await_coordinator(address: str, timeout: float) -> None:
  """A process other than 0: waits until the coordinator at `address` answers, for at most
  `timeout` seconds; raises `ConfigError` in one line where it does not."""
  host, port = split_address(address)
  deadline = time.monotonic() + timeout
  while True:
    left = deadline - time.monotonic()
    why = _answer(host, port, max(min(ANSWER_SECONDS, left), 0.05))
    if why is None:
      return
    if why != "refused":
      raise ConfigError(f"something other than a launch's coordinator listens on {address} "
                        f"({why}): process 0 cannot start its coordinator there; "
                        f"{HOW_TO_CHOOSE}, the same for every process")
    if time.monotonic() >= deadline:
      raise ConfigError(f"no coordinator answered at {address} within {timeout:g} s: start "
                        "process 0 of the launch with the same --coordinator (its own log says "
                        "why it did not start), or wait longer with --coordinator-timeout S")
    time.sleep(RETRY_SECONDS)
