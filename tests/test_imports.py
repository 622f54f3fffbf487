"""The import graph of the gpt2ja package, read from the source with :mod:`ast` (nothing is imported).

Every ``import`` and ``from … import`` statement counts, at module level and inside functions alike: a lazy import
that hides a cycle from Python at load time is still a cycle between the two modules. Only the statements under
``if TYPE_CHECKING:`` are left out (they never run). Names resolve to modules of the package:
``import gpt2ja.model.train`` and ``from gpt2ja.model import train`` import ``gpt2ja.model.train``,
``from gpt2ja.model.train import TrainConfig`` and ``from . import TrainConfig`` import the module that holds the name.
The package ``__init__`` files a dotted import runs on the way are not counted as edges (their own imports are).

Two checks:

- no cycles among the modules (each strongly connected component is reported with its edges and line numbers);
- one-way layering: ``gpt2ja.infra`` imports no other part of gpt2ja (``gpt2ja/__init__`` excepted, for the
  version); the stage packages (crawler, corpus, tokenization, model, studies) never import ``gpt2ja.flows`` or
  ``gpt2ja.cli``; ``gpt2ja.flows`` never imports ``gpt2ja.cli``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "gpt2ja"
ROOT = "gpt2ja"
STAGE_PACKAGES = ("crawler", "corpus", "tokenization", "model", "studies")


def module_files(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its ``__init__.py``)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = (package_dir.name, *path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST):
    """Every import statement of ``tree`` except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module that ``name`` (a module or a name inside one) belongs to: its longest prefix that is a module."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, dict[str, list[int]]]:
    """``{importer: {imported: [line, …]}}`` for the package's own modules."""
    modules = module_files(package_dir)
    graph: dict[str, dict[str, list[int]]] = {name: defaultdict(list) for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _statements(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join(package + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from pkg import sub` imports the submodule; `from mod import name` imports mod
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
            for target in targets:
                owner = _owner(target, modules)
                if owner is not None and owner != name and node.lineno not in graph[name][owner]:
                    graph[name][owner].append(node.lineno)
    return {name: dict(edges) for name, edges in graph.items()}


def strongly_connected(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """The components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def describe_cycles(graph: dict[str, dict[str, list[int]]]) -> str:
    lines = []
    for component in strongly_connected(graph):
        members = set(component)
        lines.append(f"cycle among {len(component)} modules: {', '.join(component)}")
        for importer in component:
            for imported, linenos in sorted(graph[importer].items()):
                if imported in members:
                    where = ", ".join(str(n) for n in sorted(linenos))
                    lines.append(f"    {importer} -> {imported} (line {where})")
    return "\n".join(lines)


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layering_violations(graph: dict[str, dict[str, list[int]]]) -> list[str]:
    rules = [(f"{ROOT}.infra", lambda imported: imported != ROOT and not _in(imported, f"{ROOT}.infra"))]
    for stage in STAGE_PACKAGES:
        rules.append((f"{ROOT}.{stage}", lambda imported: _in(imported, f"{ROOT}.flows") or imported == f"{ROOT}.cli"))
    rules.append((f"{ROOT}.flows", lambda imported: imported == f"{ROOT}.cli"))
    violations = []
    for importer, edges in sorted(graph.items()):
        for package, forbidden in rules:
            if not _in(importer, package):
                continue
            for imported, linenos in sorted(edges.items()):
                if forbidden(imported):
                    where = ", ".join(str(n) for n in sorted(linenos))
                    violations.append(f"{importer} -> {imported} (line {where}): {package} must not import it")
    return violations


def test_graph_resolves_every_spelling(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "low.py": "X = 1\n",
        "sub/__init__.py": "from . import leaf\n",
        "sub/leaf.py": "from ..low import X\nimport pkg.low\n",
        "sub/mid.py": (
            "from typing import TYPE_CHECKING\n"
            "from pkg.sub import leaf\n"
            "from .leaf import name\n"
            "if TYPE_CHECKING:\n"
            "    from pkg import top\n"
            "def f():\n"
            "    import pkg.sub.leaf as alias\n"
            "    from pkg import low, missing\n"
        ),
        "top.py": "from pkg.sub.mid import f\nimport json\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text, encoding="utf-8")
    graph = {k: sorted(v) for k, v in import_graph(pkg).items()}
    assert graph == {
        "pkg": [],
        "pkg.low": [],
        "pkg.sub": ["pkg.sub.leaf"],
        "pkg.sub.leaf": ["pkg.low"],
        "pkg.sub.mid": [
            "pkg",
            "pkg.low",
            "pkg.sub.leaf",
        ],  # pkg: `missing` is a name in its __init__; top: TYPE_CHECKING
        "pkg.top": ["pkg.sub.mid"],
    }
    assert strongly_connected(import_graph(pkg)) == []
    (pkg / "low.py").write_text("def g():\n    from pkg.top import f\n", encoding="utf-8")  # a lazy import counts
    assert strongly_connected(import_graph(pkg)) == [["pkg.low", "pkg.sub.leaf", "pkg.sub.mid", "pkg.top"]]
    assert "pkg.top -> pkg.sub.mid (line 1)" in describe_cycles(import_graph(pkg))


def test_no_import_cycles():
    graph = import_graph()
    report = describe_cycles(graph)
    print(report or "no import cycles")
    assert not report, "import cycles (break each by moving the shared code into a lower module):\n" + report


def test_imports_go_one_way():
    violations = layering_violations(graph := import_graph())
    assert graph
    print("\n".join(violations) or "layering respected")
    assert not violations, "imports against the layering (flows -> stage packages -> infra):\n" + "\n".join(violations)
