"""The import graph of the router package, read from its source with ast (nothing is imported).

Every ``import`` counts, at module level, inside functions, and under ``if TYPE_CHECKING:``
alike: an import that only runs later still ties the two modules together, and a cycle hidden
behind a local import is still a cycle.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "aibox_router"


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    local: bool  # inside a function or method body
    type_only: bool  # under ``if TYPE_CHECKING:``


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".")
    if level:
        base = base if is_package else base[:-1]
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))
    return module or ""


def imports(root: Path) -> list[Import]:
    """Every import of a module of the package by another, with where it sits."""
    modules = {module_name(root, p): p for p in root.rglob("*.py")}
    found: list[Import] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        _walk(tree, name, is_package, modules, found, local=False, type_only=False)
    return found


def _walk(node: ast.AST, name: str, is_package: bool, modules: dict[str, Path], found: list[Import],
          *, local: bool, type_only: bool) -> None:
    for child in ast.iter_child_nodes(node):
        child_local = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        child_type_only = type_only or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
        targets: list[str] = []
        if isinstance(child, ast.Import):
            targets = [a.name for a in child.names]
        elif isinstance(child, ast.ImportFrom):
            base = _resolve(name, is_package, child.level, child.module)
            # "from . import x" names a submodule when one exists, else an attribute of the package.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names]
        for target in targets:
            while target and target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name and target.startswith(PACKAGE):
                found.append(Import(name, target, getattr(child, "lineno", 0), local, type_only))
        _walk(child, name, is_package, modules, found, local=child_local, type_only=child_type_only)


def cycles(edges: list[Import]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.imported)
        graph.setdefault(e.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components
