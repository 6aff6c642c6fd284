"""The package's structure, read from its source with `ast` (nothing is imported or run).

- no import cycle between modules;
- no import of the package inside a function;
- folded to top-level parts (`synthpart.X`, a subpackage counting as one part), no cycle;
- no upward import: each part imports only parts of its own layer or lower ones in `LAYERS`.
"""

import ast
import pathlib

PACKAGE = "synthpart"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE

# The top-level parts from the bottom up: a part may import parts of its own layer or below.
LAYERS: list[set[str]] = [
  # Leaf helpers and leaf types: errors, atomic files, named choices, byte counts, the records
  # training produces.
  {"synthpart.errors", "synthpart.files", "synthpart.registry", "synthpart.memory",
   "synthpart.records"},
  # The vocabulary a run is made of (the registries of its choices), and the stores it writes.
  {"synthpart.blocks", "synthpart.labels", "synthpart.placement", "synthpart.optim",
   "synthpart.schedule", "synthpart.data", "synthpart.transfers", "synthpart.checkpoint",
   "synthpart.trash", "synthpart.schema"},
  # Networks, their cuts and costs, and every setting of a run.
  {"synthpart.partition", "synthpart.flops", "synthpart.config", "synthpart.model"},
  # What surrounds a loop: metrics, bars, directories, setup, results and their curves.
  {"synthpart.metrics", "synthpart.progress", "synthpart.tblog", "synthpart.rundir",
   "synthpart.prepare", "synthpart.results", "synthpart.curves"},
  # Training.
  {"synthpart.train"},
  # One run (which methods, and into which directory), or one exported model of it.
  {"synthpart.experiment", "synthpart.runner", "synthpart.export"},
  # The commands.
  {"synthpart.sweep", "synthpart.budget", "synthpart.report", "synthpart.bench",
   "synthpart.distributed"},
  # The entry points: the command line and the package itself.
  {"synthpart.cli", "synthpart.__main__", "synthpart"},
]

# Upward imports between parts that still exist: (importing part, imported part).
ALLOWED_UPWARD: set[tuple[str, str]] = set()


def _modules() -> dict[str, pathlib.Path]:
  """Every module of the package by dotted name (a package by its own name) -> its file."""
  out = {}
  for path in ROOT.rglob("*.py"):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


MODULES = _modules()


def _known(name: str) -> str:
  """The package module a dotted name lies in ("" for none)."""
  while name and name not in MODULES:
    name = name.rpartition(".")[0]
  return name


def _target(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
  """The package modules an import statement in `module` names, `module` itself left out.

  `from P import name` names the module P.name when there is one, else P."""
  if isinstance(node, ast.Import):
    found = [_known(a.name) for a in node.names]
  else:
    if node.level:
      base = module.split(".")
      keep = len(base) - node.level + (1 if MODULES[module].name == "__init__.py" else 0)
      prefix = ".".join(base[:keep] + ([node.module] if node.module else []))
    else:
      prefix = node.module or ""
    found = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else _known(prefix)
             for a in node.names]
  return sorted({name for name in found if name and name != module})


def _graph() -> dict[str, set[str]]:
  """Module -> the package modules it imports anywhere in its source."""
  edges: dict[str, set[str]] = {m: set() for m in MODULES}
  for module, path in MODULES.items():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        for target in _target(module, node):
          # A subpackage's __init__ gathering its own modules is not an arrow back up.
          inside = module != PACKAGE and target.startswith(module + ".")
          if not (MODULES[module].name == "__init__.py" and inside):
            edges[module].add(target)
  return edges


def _part(module: str) -> str:
  """The top-level part a module belongs to: `synthpart.X` (or `synthpart` itself)."""
  return ".".join(module.split(".")[:2])


def _fold(edges: dict[str, set[str]]) -> dict[str, set[str]]:
  """The module graph folded to top-level parts, arrows within a part left out."""
  folded: dict[str, set[str]] = {_part(m): set() for m in edges}
  for module, targets in edges.items():
    folded[_part(module)].update(_part(t) for t in targets if _part(t) != _part(module))
  return folded


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as a path that ends where it starts, or None."""
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(m: str) -> list[str] | None:
    state[m] = 1
    stack.append(m)
    for t in sorted(edges.get(m, ())):
      if state.get(t) == 1:
        return stack[stack.index(t):] + [t]
      if t not in state and (found := visit(t)):
        return found
    state[m] = 2
    stack.pop()
    return None

  for m in sorted(edges):
    if m not in state and (found := visit(m)):
      return found
  return None


def _layer_of(layers: list[set[str]]) -> dict[str, int]:
  return {part: i for i, layer in enumerate(layers) for part in layer}


def _upward(edges: dict[str, set[str]], layers: list[set[str]]) -> dict[tuple[str, str], list[str]]:
  """(importing part, imported part) -> a line per module import that goes up the layers."""
  layer = _layer_of(layers)
  found: dict[tuple[str, str], list[str]] = {}
  for module, targets in sorted(edges.items()):
    for target in sorted(targets):
      low, high = _part(module), _part(target)
      if low in layer and high in layer and layer[high] > layer[low]:
        found.setdefault((low, high), []).append(
            f"{module} (part {low}, layer {layer[low]}) imports {target} "
            f"(part {high}, layer {layer[high]})")
  return found


def test_every_part_is_in_one_layer():
  parts = {_part(m) for m in MODULES}
  listed = [part for layer in LAYERS for part in layer]
  missing = sorted(parts - set(listed))
  assert not missing, ", ".join(
      f"{part} is a part of the package not in LAYERS: add it to the layer it belongs to"
      for part in missing)
  gone = sorted(set(listed) - parts)
  assert not gone, f"LAYERS names parts the package does not have: {', '.join(gone)}"
  twice = sorted({part for part in listed if listed.count(part) > 1})
  assert not twice, f"LAYERS names these parts in more than one layer: {', '.join(twice)}"


def test_the_package_has_no_import_cycle():
  cycle = _cycle(_graph())
  assert cycle is None, "import cycle between modules: " + " -> ".join(cycle or [])


def test_the_top_level_parts_have_no_import_cycle():
  folded = _fold(_graph())
  for low, high in ALLOWED_UPWARD:
    folded.get(low, set()).discard(high)
  cycle = _cycle(folded)
  assert cycle is None, "import cycle between top-level parts: " + " -> ".join(cycle or [])


def test_no_part_imports_one_above_it():
  upward = _upward(_graph(), LAYERS)
  unexpected = [line for edge, lines in sorted(upward.items()) if edge not in ALLOWED_UPWARD
                for line in lines]
  assert not unexpected, "imports up the layers of LAYERS:\n" + "\n".join(unexpected)
  layer = _layer_of(LAYERS)
  stale = [f"{low} (layer {layer.get(low)}) no longer imports {high} (layer {layer.get(high)}):"
           " remove it from ALLOWED_UPWARD" for low, high in sorted(ALLOWED_UPWARD - set(upward))]
  assert not stale, "\n".join(stale)


def test_no_package_import_inside_a_function():
  hidden = []
  for module, path in MODULES.items():
    for fn in ast.walk(ast.parse(path.read_text())):
      if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for node in ast.walk(fn):
          if isinstance(node, (ast.Import, ast.ImportFrom)) and _target(module, node):
            hidden.append(f"{module}.{fn.name}: {ast.unparse(node)}")
  assert not hidden, "function-local package imports:\n" + "\n".join(hidden)


def test_the_checks_find_what_they_look_for():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None
  folded = _fold({"p.a.x": {"p.b"}, "p.a.y": {"p.a.x"}, "p.b": set()})
  assert folded == {"p.a": {"p.b"}, "p.b": set()}
  upward = _upward({"p.a.x": {"p.b.y"}, "p.b.y": set()}, [{"p.a"}, {"p.b"}])
  assert upward == {("p.a", "p.b"): ["p.a.x (part p.a, layer 0) imports p.b.y (part p.b, layer 1)"]}
  assert not _upward({"p.b.y": {"p.a.x"}, "p.a.x": set()}, [{"p.a"}, {"p.b"}])
