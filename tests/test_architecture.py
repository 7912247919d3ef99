"""The import structure docs/architecture.md describes: layers that point one way, no cycles.

Imports are read from the source (``ast``), lazy ones inside functions and ``TYPE_CHECKING``
blocks included: a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cliprnn", "operators")
DEV = "cliprnn.dev"
#: what a user's install runs: the library's entry points, the FiftyOne layer, the plugin's
#: operators and the zoo hooks
RUNTIME_ENTRY_POINTS = [
    "cliprnn",
    "cliprnn.cli",
    "cliprnn.fiftyone",
    "cliprnn.fiftyone.zoo",
    "cliprnn.pipeline",
    "cliprnn.video",
    "cliprnn.sam_refine",
    "cliprnn.convert",
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else base)
    return {t for t in targets if t in known and t != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _is_dev(name: str) -> bool:
    return name == DEV or name.startswith(DEV + ".")


def test_the_runtime_library_never_imports_the_development_world(graph) -> None:
    # __main__ is the program that joins the library's commands and the development ones
    offenders = {
        (module, target)
        for module, targets in graph.items()
        for target in targets
        if not _is_dev(module) and module != "cliprnn.__main__" and _is_dev(target)
    }
    assert offenders == set()


#: the deprecated ``cliprnn.segment_collection`` forwards to the FiftyOne layer until 0.3
DEPRECATED_UPWARD = {("cliprnn", "cliprnn.fiftyone")}


def test_the_engine_never_imports_fiftyone_or_the_plugin(graph) -> None:
    engine = [
        m
        for m in graph
        if m.startswith("cliprnn") and not m.startswith("cliprnn.fiftyone") and not _is_dev(m)
    ]
    upward = {
        (m, t) for m in engine for t in graph[m] if t.startswith(("cliprnn.fiftyone", "operators"))
    }
    assert upward == DEPRECATED_UPWARD
    modules = _modules()
    for module in engine:
        tree = ast.parse(modules[module].read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {n for n in names if n.split(".")[0] == "fiftyone"}, module


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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


def test_no_import_cycles(graph) -> None:
    assert _cycles(graph) == []


def test_deprecated_segment_collection_warns_and_forwards() -> None:
    import cliprnn
    import cliprnn.fiftyone

    # forwarded: the real function wants a collection
    with (
        pytest.warns(FutureWarning, match="cliprnn.fiftyone.segment_collection"),
        pytest.raises(TypeError),
    ):
        cliprnn.segment_collection()


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_runtime_entry_points_load_nothing_of_the_development_world() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {RUNTIME_ENTRY_POINTS!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('cliprnn.dev')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "[]"
