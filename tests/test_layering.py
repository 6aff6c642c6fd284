"""The package's structure: no import cycles, no package import hidden inside a function."""

import ast
import pathlib

import synthpart

ROOT = pathlib.Path(synthpart.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in ROOT.rglob("*.py"):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


MODULES = _modules()


def _target(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
  """The package modules an import statement names."""
  if isinstance(node, ast.Import):
    names = [a.name for a in node.names]
  else:
    base = module.split(".")
    if node.level:
      keep = len(base) - node.level + (1 if MODULES[module].name == "__init__.py" else 0)
      prefix = ".".join(base[:keep] + ([node.module] if node.module else []))
    else:
      prefix = node.module or ""
    names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
  found = []
  for name in names:
    while name and name not in MODULES:
      name = name.rpartition(".")[0]
    if name and name != module:
      found.append(name)
  return found


def _graph() -> dict[str, set[str]]:
  edges: dict[str, set[str]] = {m: set() for m in MODULES}
  for module, path in MODULES.items():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        for target in _target(module, node):
          # A package's __init__ re-exporting its own modules is not an arrow back up.
          if not (MODULES[module].name == "__init__.py" and target.startswith(module + ".")):
            edges[module].add(target)
  return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(m: str) -> list[str] | None:
    state[m] = 1
    stack.append(m)
    for t in sorted(edges[m]):
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


def test_the_package_has_no_import_cycle():
  cycle = _cycle(_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_training_never_imports_the_benchmarks():
  edges = _graph()
  found = sorted(f"{m} -> {t}" for m in edges if m.startswith("synthpart.train")
                 for t in edges[m] if t.startswith("synthpart.bench"))
  assert not found, "synthpart.train imports synthpart.bench:\n" + "\n".join(found)


def test_the_cycle_check_finds_a_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_package_import_inside_a_function():
  hidden = []
  for module, path in MODULES.items():
    for fn in ast.walk(ast.parse(path.read_text())):
      if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for node in ast.walk(fn):
          if isinstance(node, (ast.Import, ast.ImportFrom)) and _target(module, node):
            hidden.append(f"{module}.{fn.name}: {ast.unparse(node)}")
  assert not hidden, "function-local package imports:\n" + "\n".join(hidden)
