"""The project's own error types.

Every error a user can cause derives from `SynthpartError`; the command line prints its message as
one line and exits with status 2, so messages must name the culprit and what is allowed. Code of
the user's that synthpart calls (a model factory, a metric writer) goes through `call_user_code`,
so that whatever it raises is such an error too, naming the function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class SynthpartError(Exception):
  """A problem caused by the user's input (config, data, files), reported without a traceback."""


class ConfigError(SynthpartError):
  """A setting is missing, malformed or out of range."""


class DataError(SynthpartError):
  """A data file or directory is missing, corrupt or inconsistent."""


class CheckpointError(SynthpartError):
  """A checkpoint or run directory cannot be used."""


class ResourceError(SynthpartError):
  """The machine lacks what a run needs: memory for the network, or space on the disk."""


class DiskFullError(ResourceError):
  """No space was left on the device while writing a named file."""


class UserCodeError(SynthpartError):
  """A function of the user's (`model.factory`, a `--metrics-writer` factory or one of its
  writer's methods) raised: the message names the function and the exception; the exception
  itself is the `__cause__`, whose traceback `synthpart --debug` prints."""


def call_user_code(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
  """`fn(*args, **kwargs)`, the user's function `name` (e.g. "model.factory my_nets:build"); an
  exception it raises becomes a `UserCodeError` naming `name` and the exception's type and
  first line, chained to it. `SynthpartError`s (the user's code may raise synthpart's own) and
  interrupts pass through as they are."""
  try:
    return fn(*args, **kwargs)
  except SynthpartError:
    raise
  except Exception as e:
    text = str(e).strip()
    first = text.splitlines()[0][:200] if text else "(no message)"
    raise UserCodeError(f"{name} raised {type(e).__name__}: {first}") from e
