"""The package layering, read from the source: models <- data_pipelines <- harness <- sweeps.

Every import (module level or inside a function) is checked: nothing imports a package above its own, no
group of modules imports itself in a circle, and no source file is over 400 lines. The one place harness
names a package above it is the CLI's command table (a string, looked up when the command runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["models", "data_pipelines", "harness", "sweeps"]  # each may import only those before it
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYERS:
        for path in (REPO / pkg).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules imported by the file (absolute and relative imports, at any depth)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                    else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(path, name, set(mods)) for name, path in mods.items()}


def test_no_module_imports_a_package_above_its_own():
    upward = []
    for name, deps in _graph().items():
        layer = LAYERS.index(name.split(".")[0])
        upward += [f"{name} -> {d}" for d in sorted(deps) if LAYERS.index(d.split(".")[0]) > layer]
    assert upward == []


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_source_file_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in _modules().values() if (n := len(p.read_text().splitlines()))
            > MAX_LINES}
    assert long == {}


def test_the_checker_sees_an_upward_import(tmp_path):
    """Negative control: the import reader resolves `from harness.x import y` inside a function."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from harness.step import train_step\n    import models.losses\n")
    assert _imports(f, "data_pipelines.m", {"harness.step", "models.losses", "data_pipelines.m"}) == \
        {"harness.step", "models.losses"}
