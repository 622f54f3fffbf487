"""The redesign's figures (issue 26) at any git revision, read with ``git ls-tree``/``git show`` (nothing checked out).

    .venv/bin/python benchmarks/code_counts.py --rev cb3e993 --rev HEAD

prints one markdown table, one column per revision:

- **library lines**: non-blank lines of Python in the project's packages, tests and benchmarks excluded. The
  packages are the top-level folders with an ``__init__.py`` other than tests/benchmarks/examples/configs/docs/deploy:
  ``crawler/ corpus/ tokenization/ model/ flows/ infra/ studies/ gpt2ja/`` in the old layout, ``gpt2ja/`` in the new;
- **library files**: the Python files counted above;
- **pydantic models**: classes deriving ``BaseModel`` (or ``RootModel``/``BaseSettings``), directly or through
  another model class of the project (resolved by class name), plus ``create_model(`` calls;
- **hand-written CLI options**: calls of ``typer.Option(`` and ``typer.Argument(`` (or ``Option(``/``Argument(``
  imported from typer) in the modules that import typer;
- **import circles**: strongly connected components of more than one module in the import graph, read with
  :mod:`ast` as ``tests/test_imports.py`` reads it (module- and function-level imports, those under
  ``if TYPE_CHECKING:`` left out; ``from pkg import sub`` is an edge to the submodule, ``from mod import name``
  to ``mod``);
- **modules in circles**: the modules of those components;
- **README lines**.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import PurePosixPath

NOT_PACKAGES = {"tests", "benchmarks", "examples", "configs", "docs", "deploy", ".ci"}
MODEL_BASES = {"BaseModel", "RootModel", "BaseSettings"}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def python_files(rev: str) -> dict[str, str]:
    """``{path: source}`` of every Python file in the revision's packages."""
    paths = git("ls-tree", "-r", "--name-only", rev).splitlines()
    packages = {
        p.split("/")[0]
        for p in paths
        if p.count("/") == 1 and p.endswith("/__init__.py") and p.split("/")[0] not in NOT_PACKAGES
    }
    files = {}
    for p in paths:
        if p.endswith(".py") and p.split("/")[0] in packages:
            files[p] = git("show", f"{rev}:{p}")
    return files


def module_name(path: str) -> str:
    parts = PurePosixPath(path).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _owner(name: str, modules: set[str]) -> str | None:
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def import_graph(trees: dict[str, ast.AST], is_package: dict[str, bool]) -> dict[str, set[str]]:
    modules = set(trees)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in trees.items():
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    package = name.split(".") if is_package[name] else name.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join(package + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                owner = _owner(target, modules)
                if owner is not None and owner != name:
                    graph[name].add(owner)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        work = [(start, iter(sorted(graph[start])))]
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
                    found.append(sorted(component))
    return found


def _base_name(base: ast.expr) -> str | None:
    if isinstance(base, ast.Subscript):  # RootModel[list[int]]
        base = base.value
    if isinstance(base, ast.Name):
        return base.id
    if isinstance(base, ast.Attribute):
        return base.attr
    return None


def pydantic_models(trees: dict[str, ast.AST]) -> int:
    """Classes deriving a pydantic model (by class name across the project), plus ``create_model(`` calls."""
    bases: dict[str, set[str]] = defaultdict(set)
    classes = []
    created = 0
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                names = {n for n in (_base_name(b) for b in node.bases) if n}
                classes.append((node.name, names))
                bases[node.name] |= names
            elif isinstance(node, ast.Call) and _base_name(node.func) == "create_model":
                created += 1
    models = set(MODEL_BASES)
    changed = True
    while changed:
        changed = False
        for name, names in bases.items():
            if name not in models and names & models:
                models.add(name)
                changed = True
    return sum(1 for name, names in classes if names & models) + created


def cli_options(trees: dict[str, ast.AST]) -> int:
    """``typer.Option(``/``typer.Argument(`` calls (or the bare names imported from typer) in modules using typer."""
    count = 0
    for tree in trees.values():
        bare = set()
        uses_typer = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name == "typer" for a in node.names):
                uses_typer = True
            elif isinstance(node, ast.ImportFrom) and node.module == "typer":
                uses_typer = True
                bare |= {a.asname or a.name for a in node.names if a.name in ("Option", "Argument")}
        if not uses_typer:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("Option", "Argument"):
                if isinstance(func.value, ast.Name) and func.value.id == "typer":
                    count += 1
            elif isinstance(func, ast.Name) and func.id in bare:
                count += 1
    return count


def counts(rev: str) -> dict[str, str]:
    files = python_files(rev)
    trees = {module_name(p): ast.parse(src, filename=p) for p, src in files.items()}
    is_package = {module_name(p): p.endswith("__init__.py") for p in files}
    found = circles(import_graph(trees, is_package))
    lines = sum(1 for src in files.values() for line in src.splitlines() if line.strip())
    try:
        readme = len(git("show", f"{rev}:README.md").splitlines())
    except subprocess.CalledProcessError:
        readme = 0
    packages = sorted({p.split("/")[0] + "/" for p in files})
    return {
        "packages": " ".join(f"`{p}`" for p in packages),
        "library lines (non-blank Python)": f"{lines:,}",
        "library files": f"{len(files):,}",
        "pydantic models": f"{pydantic_models(trees):,}",
        "hand-written CLI options (typer.Option/Argument)": f"{cli_options(trees):,}",
        "import circles (components > 1 module)": f"{len(found):,}",
        "modules in circles": f"{sum(len(c) for c in found):,}",
        "README.md lines": f"{readme:,}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rev", action="append", help="a git revision (repeat for more columns); default HEAD")
    parser.add_argument("--circles", action="store_true", help="also list each revision's import circles")
    args = parser.parse_args(argv)
    revs = args.rev or ["HEAD"]
    columns = {}
    for rev in revs:
        short = git("rev-parse", "--short", rev).strip()
        label = rev if rev == short else f"{rev} ({short})"
        columns[label] = counts(rev)
    rows = list(next(iter(columns.values())))
    print("| | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for row in rows:
        print(f"| {row} | " + " | ".join(col[row] for col in columns.values()) + " |")
    if args.circles:
        for rev in revs:
            files = python_files(rev)
            trees = {module_name(p): ast.parse(src) for p, src in files.items()}
            is_package = {module_name(p): p.endswith("__init__.py") for p in files}
            for component in circles(import_graph(trees, is_package)):
                print(f"{rev}: {' ↔ '.join(component)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
