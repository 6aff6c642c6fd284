"""Optional packages a dataset needs (scikit-learn for digits, tensorflow-datasets for TFDS
copies): an error that tells "not installed" from "installed but failed to import", and names
the real cause of the latter (running out of memory, a broken installation)."""

from __future__ import annotations

from synthpart.errors import DataError, ResourceError, SynthpartError


def describe(e: BaseException) -> str:
  """`e`'s type and message on one line (at most 200 characters of it), e.g. "OSError: ..."."""
  message = " ".join(str(e).split())[:200]
  return f"{type(e).__name__}: {message}" if message else type(e).__name__


# How the loader reports running out of address space while mapping a shared library.
_NO_MEMORY = ("failed to map segment", "cannot allocate memory", "out of memory")


def import_error(e: BaseException, module: str, culprit: str, package: str,
                 missing: str) -> SynthpartError:
  """The error for an optional package that would not import: `missing` where `module` (its
  top-level module) is not installed; else what really failed, naming `package` and the cause
  (running out of memory is a `ResourceError`)."""
  if isinstance(e, ModuleNotFoundError) and e.name == module:
    return DataError(missing)
  cause = describe(e)
  if isinstance(e, MemoryError) or any(m in str(e).lower() for m in _NO_MEMORY):
    return ResourceError(f"{culprit}: importing {package} ran out of memory ({cause}); raise "
                         "this process's memory limit (ulimit -v) or free some memory")
  return DataError(f"{culprit}: {package} is installed but failed to import ({cause}); "
                   f"repair it, e.g. pip install --force-reinstall {package}")
