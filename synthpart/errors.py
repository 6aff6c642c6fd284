"""The project's own error types.

Every error a user can cause derives from `SynthpartError`; the command line prints its message as
one line and exits with status 2, so messages must name the culprit and what is allowed.
"""


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
