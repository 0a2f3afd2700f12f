"""The package's shape (DESIGN.md, Layout): no import circle, a runtime core that never imports a
command-line module or the benchmarks, configs that import only `semclip_jax.config`, and no
reference to data outside the repository.

Imports are read with `ast` from the source, those inside functions included (a lazy import that
dodges a circle is still a circle). `from pkg import name` is an edge to `pkg.name` when that is a
module, else to `pkg`; the implicit import of a parent package's `__init__` is not an edge.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "semclip_jax"

# Entry points: run with `python -m`, never imported by library code.
CLI_MODULES = ("semclip_jax.main", "semclip_jax.evaluate", "semclip_jax.data.prepare",
               "semclip_jax.data.triples.__main__")
CLI_PACKAGES = ("semclip_jax.bench",)  # every module of the benchmark package
RUNTIME_CORE = ("semclip_jax.models", "semclip_jax.losses", "semclip_jax.objective",
                "semclip_jax.train_step", "semclip_jax.train", "semclip_jax.checkpointing",
                "semclip_jax.config", "semclip_jax.sharding", "semclip_jax.optim",
                "semclip_jax.data.sources", "semclip_jax.data.input_pipeline",
                "semclip_jax.data.shapes", "semclip_jax.data.transforms", "semclip_jax.evaluators",
                "semclip_jax.hf", "semclip_jax.openclip", "semclip_jax.pretrained",
                "semclip_jax.torch_files", "semclip_jax.image_embedding_cache",
                "semclip_jax.data.bucket_agreement", "semclip_jax.metrics_writer")


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _in(name: str, prefixes) -> bool:
  return any(name == p or name.startswith(p + ".") for p in prefixes)


def imports_of(name: str) -> set[str]:
  """The package modules `name` imports, at module level or inside functions."""
  path = MODULES[name]
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: resolve against this module's package
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    else:
      continue
    found.update(t for t in targets if t in MODULES and t != name)
  return found


GRAPH = {name: imports_of(name) for name in MODULES}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan), i.e. the import circles."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def reachable(start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for w in GRAPH[todo.pop()] - seen:
      seen.add(w)
      todo.append(w)
  return seen


def test_the_checker_finds_circles_and_lazy_imports():
  assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert circles({"a": {"b"}, "b": set()}) == []
  assert "semclip_jax.losses" in GRAPH["semclip_jax.objective"]


def test_no_import_circle():
  assert circles(GRAPH) == []


@pytest.mark.parametrize("core", [m for m in MODULES if _in(m, RUNTIME_CORE)])
def test_runtime_core_never_imports_a_cli_or_the_benchmarks(core):
  bad = sorted(m for m in reachable(core) if m in CLI_MODULES or _in(m, CLI_PACKAGES))
  assert not bad, f"{core} imports (directly or through others) {bad}"


def test_configs_import_only_the_config_module():
  # Installed as the package semclip_jax.configs (setup.cfg), a config may use only what the
  # installed package has: semclip_jax.config, nothing from the repository around it.
  for path in sorted((REPO / "configs").glob("*.py")):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    if path.name == "__init__.py":  # the package marker imports nothing
      assert not imported, (path.name, imported)
      continue
    assert imported == {"semclip_jax"}, (path.name, imported)
    assert {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            for a in n.names} == {"config"}, path.name


def test_nothing_refers_to_data_outside_the_repository():
  sources = [p for p in REPO.rglob("*") if p.suffix in (".py", ".sh", ".cfg", ".toml", ".ipynb")
             and ".venv" not in p.parts and ".git" not in p.parts]
  offenders = [str(p.relative_to(REPO)) for p in sources
               if "shared/data" in p.read_text(encoding="utf-8", errors="replace")
               and p != pathlib.Path(__file__)]
  assert not offenders
