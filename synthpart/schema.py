"""JSON documents synthpart reads back (results.json, sweep.json, budget.json), checked against a
small declarative schema, so that a damaged or hand-edited file is one line naming the file, the
entry and what it must be, never a traceback deep inside a report.

A schema is

- a kind: "int" (a whole number), "number", "string", "bool", "object" (any JSON object) or
  "any"; with a trailing "?", null is allowed too;
- ``[schema]``: a list whose every item matches `schema`;
- ``{key: schema}``: an object holding every key (a key ending in "?" is optional; other keys
  are allowed and not checked).

`read_json` reads a file as such a document: UTF-8, valid JSON, nested at most `MAX_DEPTH` deep.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synthpart.errors import DataError
from synthpart.files import read_user_text

Schema = str | list[Any] | dict[str, Any]

# No document synthpart writes is nested half as deep; past it a file is no document of ours.
MAX_DEPTH = 64

_KINDS: dict[str, tuple[str, Any]] = {
    "int": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": ("a number",
               lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "string": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "object": ("a JSON object", lambda v: isinstance(v, Mapping)),
    "any": ("anything", lambda v: True),
}


def _shown(value: Any) -> str:
  text = json.dumps(value) if not isinstance(value, (Mapping, list)) else type(value).__name__
  return text if len(text) <= 40 else text[:37] + "..."


def check(value: Any, schema: Schema, source: str, what: str) -> None:
  """Raises `DataError` naming the first entry of `value` that `schema` refuses: "SOURCE is not
  a synthpart WHAT: runs[0].test_accuracy must be a number or null, got \"0.9\"" (or "...
  is missing")."""
  def fail(where: str, text: str) -> DataError:
    return DataError(f"{source} is not a synthpart {what}: {where or 'the document'} {text}")

  def visit(value: Any, schema: Schema, where: str) -> None:
    if isinstance(schema, str):
      kind, nullable = schema.rstrip("?"), schema.endswith("?")
      description, ok = _KINDS[kind]
      if not (ok(value) or (nullable and value is None)):
        raise fail(where, f"must be {description}{' or null' if nullable else ''}, got "
                          f"{_shown(value)}")
    elif isinstance(schema, list):
      if not isinstance(value, list):
        raise fail(where, f"must be a list, got {_shown(value)}")
      for i, item in enumerate(value):
        visit(item, schema[0], f"{where}[{i}]")
    else:
      if not isinstance(value, Mapping):
        raise fail(where, f"must be a JSON object, got {_shown(value)}")
      for key, item_schema in schema.items():
        name, optional = key.rstrip("?"), key.endswith("?")
        inner = f"{where}.{name}" if where else name
        if name not in value:
          if optional:
            continue
          raise fail(inner, "is missing")
        visit(value[name], item_schema, inner)

  visit(value, schema, "")


def depth(value: Any) -> int:
  """How deep lists and objects nest in `value` (a scalar: 0), counted without recursion."""
  deepest, stack = 0, [(value, 0)]
  while stack:
    item, level = stack.pop()
    if isinstance(item, Mapping):
      stack.extend((v, level + 1) for v in item.values())
    elif isinstance(item, list):
      stack.extend((v, level + 1) for v in item)
    else:
      continue
    deepest = max(deepest, level + 1)
  return deepest


def read_json(path: Path, what: str) -> Any:
  """The JSON document in `path`; a one-line `DataError` naming it (`what`, e.g. "results
  file", before its path) where it is missing, a directory, unreadable, not UTF-8, not JSON or
  nested deeper than `MAX_DEPTH`."""
  where = f"{what} {path}"
  text = read_user_text(path, where, DataError)
  try:
    document = json.loads(text)
  except RecursionError:
    raise DataError(f"{where} is nested too deeply to be a synthpart document (at most "
                    f"{MAX_DEPTH} levels)") from None
  except ValueError as e:
    raise DataError(f"{where} is not valid JSON: {e}") from None
  if depth(document) > MAX_DEPTH:
    raise DataError(f"{where} is nested too deeply to be a synthpart document (at most "
                    f"{MAX_DEPTH} levels)")
  return document
