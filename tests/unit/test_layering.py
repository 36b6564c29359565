"""The package's layering, read from the source (ast), without importing it.

* no import cycle between bidopt modules, counting imports inside functions too (a lazy import
  still runs, and a cycle through one is how the job module once imported the CLI);
* the library never imports the CLI (``bidopt.cli`` and ``bidopt.__main__`` may import the rest);
* CLI modules stay small and reach the database only through the service layer;
* no module imports a private name (``_x``) of another.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "bidopt"
CLI_MAX_LINES = 250
# The data layer: the CLI calls bidopt.service (or another library function), never these.
DATA_LAYER = ("bidopt.db.queries", "bidopt.db.access")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for every import of a bidopt module in the file,
    wherever it is (top level or inside a function). ``from a import b`` counts as importing
    ``a.b`` when that is a module, else ``a``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full, None, node.lineno) if full in known else (base, alias.name, node.lineno))
    return [(m, n, line) for m, n, line in found if m == "bidopt" or m.startswith("bidopt.")]


def resolve(module: str, known: set[str]) -> str | None:
    """The module itself, or its nearest known package (``import bidopt.x.y`` of a non-module)."""
    while module and module not in known:
        module = module.rpartition(".")[0]
    return module or None


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    mods = modules(root)
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        targets = {resolve(m, known) for m, _, _ in imports_of(name, path, known)}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module, each as a cycle path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the package has far fewer modules than the recursion limit
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                components.append(_cycle_path(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A path a -> ... -> a inside one strongly connected component (for the failure message)."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        step = sorted(graph[path[-1]] & component)
        if start in step and len(path) > 1:
            return [*path, start]
        nxt = next((w for w in step if w not in seen), None)
        if nxt is None:  # every neighbour seen: close the loop at the first one on the path
            nxt = step[0]
            return [*path[path.index(nxt) :], nxt]
        path.append(nxt)
        seen.add(nxt)


def is_cli(module: str) -> bool:
    return module == "bidopt.__main__" or module == "bidopt.cli" or module.startswith("bidopt.cli.")


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_library_never_imports_the_cli():
    mods = modules()
    known = set(mods)
    wrong = [
        f"{name} (line {line}) imports {module}"
        for name, path in mods.items()
        if not is_cli(name)
        for module, _, line in imports_of(name, path, known)
        if is_cli(resolve(module, known) or "")
    ]
    assert not wrong, wrong


def test_cli_modules_are_small_and_go_through_the_service_layer():
    mods = {name: path for name, path in modules().items() if is_cli(name)}
    assert "bidopt.cli.main" in mods and len(mods) > 5
    known = set(modules())
    too_long = {name: n for name, path in mods.items() if (n := len(path.read_text().splitlines())) > CLI_MAX_LINES}
    assert not too_long, f"CLI modules over {CLI_MAX_LINES} lines: {too_long}"
    data_layer = [
        f"{name} (line {line}) imports {module}"
        for name, path in mods.items()
        for module, _, line in imports_of(name, path, known)
        if resolve(module, known) in DATA_LAYER or module in DATA_LAYER
    ]
    assert not data_layer, data_layer


def test_no_module_imports_a_private_name_of_another():
    mods = modules()
    known = set(mods)
    private = [
        f"{name} (line {line}): from {module} import {imported}"
        for name, path in mods.items()
        for module, imported, line in imports_of(name, path, known)
        if imported and imported.startswith("_") and not imported.startswith("__")
    ]
    assert not private, private


# ----------------------------------------------------------------------------- the checks themselves


@pytest.fixture
def fake_package(tmp_path):
    def make(files: dict[str, str]) -> Path:
        root = tmp_path / "bidopt"
        for rel, text in {"__init__.py": "", **files}.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return root

    return make


def test_a_cycle_through_a_lazy_import_is_found(fake_package):
    root = fake_package(
        {
            "cli/__init__.py": "",
            "cli/main.py": "from bidopt.jobs.run import go\n",
            "jobs/__init__.py": "",
            "jobs/run.py": "def go():\n    from bidopt.cli.main import cli\n",
            "a.py": "from . import b\n",
            "b.py": "import bidopt.c\n",
            "c.py": "from bidopt import a\n",
            "d.py": "from bidopt import a\n",
        }
    )
    cycles = find_cycles(import_graph(root))
    assert sorted(sorted(set(c)) for c in cycles) == [
        ["bidopt.a", "bidopt.b", "bidopt.c"],
        ["bidopt.cli.main", "bidopt.jobs.run"],
    ]
    assert all(c[0] == c[-1] for c in cycles)
