"""The shape of src/helpers: no import cycles, modules of one concept, one process layer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
HELPERS = SRC / "helpers"
MAX_LINES = 400


def module_name(file: Path) -> str:
    parts = list(file.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the helpers modules it imports (also inside functions; not TYPE_CHECKING ones)."""
    files = {module_name(f): f for f in HELPERS.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, file in files.items():
        tree = ast.parse(file.read_text(encoding="utf-8"))
        skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for b in node.body for n in ast.walk(b)}
        package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                prefix = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{prefix}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                resolved = resolve(target) if target.startswith("helpers") else None
                if resolved and resolved != name:
                    graph[name].add(resolved)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, as the path that closes it (depth-first search)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_graph_sees_imports_at_every_level():
    graph = import_graph()
    assert "helpers.errors" in graph["helpers.settings"]                  # from .errors import ...
    assert "helpers.process" in graph["helpers.server"]                   # from . import process
    assert "helpers.errors" in graph["helpers.bench.offline"]             # from ..errors import ...
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) and not cycles({"a": {"b"}, "b": set()})


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_module_is_several_concepts_in_one_file():
    long = {str(f.relative_to(SRC)): n for f in HELPERS.rglob("*.py")
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_only_the_process_layer_starts_long_lived_children():
    pattern = re.compile(r"\bPopen\(|start_new_session|\bkillpg\(")
    offenders = [str(f.relative_to(SRC)) for f in HELPERS.rglob("*.py")
                 if f.name not in ("process.py", "_guard.py") and pattern.search(f.read_text(encoding="utf-8"))]
    assert offenders == []
