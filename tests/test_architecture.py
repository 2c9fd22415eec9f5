"""The import graph of ``deepshrink`` has no circles (DESIGN.md: data flows one way).

Read statically from every module's source, imports inside functions included (a lazy import is
still a dependency): no two top-level packages import each other, directly or around a circle; no
two files import each other; nothing outside the command line imports ``deepshrink.cli``; ``core``
imports no capability.
"""

from __future__ import annotations

import ast
from pathlib import Path

import deepshrink

ROOT = Path(deepshrink.__file__).parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every deepshrink module ``name`` imports (the deepest known prefix of each target)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("deepshrink"):
                found.add(t)
    return found


GRAPH = {name: _imports(name, path, set(_modules())) for name, path in _modules().items()}


def _top(name: str) -> str:
    return ".".join(name.split(".")[:2])


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_packages_form_no_circle():
    top: dict[str, set[str]] = {}
    for name, deps in GRAPH.items():
        if name == "deepshrink":  # the package root re-exports the verbs lazily
            continue
        top.setdefault(_top(name), set()).update(_top(d) for d in deps if _top(d) not in (_top(name), "deepshrink"))
    assert _cycle(top) is None, " -> ".join(_cycle(top) or [])


def test_no_two_files_import_each_other():
    pairs = sorted({tuple(sorted((a, b))) for a, deps in GRAPH.items() for b in deps
                    if a in GRAPH.get(b, ()) and not (a.startswith(b + ".") or b.startswith(a + "."))})
    assert not pairs, pairs


def test_only_the_command_line_imports_it():
    users = sorted(n for n, deps in GRAPH.items() if not n.startswith("deepshrink.cli")
                   and n != "deepshrink.__main__"  # python -m deepshrink: the command line itself
                   and any(d.startswith("deepshrink.cli") for d in deps))
    assert users == [], users


def test_core_imports_no_capability():
    allowed = ("deepshrink.core", "deepshrink.errors")
    bad = sorted((n, d) for n, deps in GRAPH.items() if n.startswith("deepshrink.core")
                 for d in deps if not d.startswith(allowed))
    assert bad == [], bad


def test_the_check_sees_imports_inside_functions():
    assert "deepshrink.convert.export" in GRAPH["deepshrink.convert.writers"]  # a lazy import, inside save()
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
