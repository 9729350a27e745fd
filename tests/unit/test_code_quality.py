"""The package's shape, enforced: strict typing, no import cycles, imports that only go down.

Static and offline: mypy reads router/ (its settings in pyproject.toml, ``[tool.mypy]``), the import
graph is read from the source with ast (tests/support/import_graph.py). ruff runs in
test_python_lint.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.import_graph import Import, cycles, imports

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "router"


def test_mypy_strict_passes_on_the_router_package() -> None:
    # --cache-dir=/dev/null: no .mypy_cache written into the checkout.
    command = [sys.executable, "-m", "mypy", "--strict", "--cache-dir=/dev/null", "router"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_the_package_has_no_import_cycle() -> None:
    found = cycles(imports(PACKAGE))
    assert found == [], "import cycles (function-level imports count too): " + "; ".join(
        " <-> ".join(c) for c in found)


# Lower layer -> the packages and modules it must not import.
UPWARD = {
    "aibox_router.wire": ("aibox_router.api", "aibox_router.backends", "aibox_router.pipeline",
                          "aibox_router.server", "aibox_router.cli"),
    "aibox_router.backends": ("aibox_router.api", "aibox_router.pipeline", "aibox_router.server",
                              "aibox_router.cli"),
    "aibox_router.pipeline": ("aibox_router.api", "aibox_router.server", "aibox_router.cli"),
    "aibox_router.server": ("aibox_router.cli",),
}


def upward_imports(edges: list[Import]) -> list[Import]:
    """Imports against the layering; and config.py, the schema, may import nothing but errors.py."""
    return [e for e in edges
            if any(_within(e.importer, low) and any(_within(e.imported, up) for up in ups)
                   for low, ups in UPWARD.items())
            or (e.importer == "aibox_router.config" and e.imported != "aibox_router.errors")]


def test_lower_layers_do_not_import_upper_ones() -> None:
    wrong = upward_imports(imports(PACKAGE))
    assert wrong == [], "\n".join(f"{e.importer} imports {e.imported} (line {e.line})" for e in wrong)


def test_an_upward_import_is_caught() -> None:
    edges = [Import("aibox_router.backends.anthropic", "aibox_router.api.anthropic", 16, False, False),
             Import("aibox_router.config", "aibox_router.rules", 3, True, False),
             Import("aibox_router.api.anthropic", "aibox_router.wire.anthropic", 9, False, False)]
    assert upward_imports(edges) == edges[:2]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# -- the checker itself, on a small tree: a cycle hidden behind a local import is still found ------


def _imports_of_tree(tmp_path: Path, files: dict[str, str]) -> list[Import]:
    """Write a package made of *files* and read its imports."""
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return imports(tmp_path)


def test_the_checker_finds_a_cycle_behind_a_function_level_import(tmp_path: Path) -> None:
    edges = _imports_of_tree(tmp_path, {
        "__init__.py": "",
        "config.py": "def check():\n    from . import rules\n    return rules\n",
        "rules.py": "from .config import check\n",
        "wire/__init__.py": "",
        "wire/sse.py": "from ..config import check\n",
    })
    assert Import("aibox_router.config", "aibox_router.rules", 2, local=True, type_only=False) in edges
    assert cycles(edges) == [["aibox_router.config", "aibox_router.rules"]]


def test_the_checker_counts_type_checking_imports_and_resolves_relative_ones(tmp_path: Path) -> None:
    edges = _imports_of_tree(tmp_path, {
        "__init__.py": "",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub import b\n",
        "sub/__init__.py": "",
        "sub/b.py": "from .. import a\nimport aibox_router.sub\n",
    })
    assert {(e.importer, e.imported, e.type_only) for e in edges} == {
        ("aibox_router.a", "aibox_router.sub.b", True),
        ("aibox_router.sub.b", "aibox_router.a", False),
        ("aibox_router.sub.b", "aibox_router.sub", False),
    }
    assert cycles(edges) == [["aibox_router.a", "aibox_router.sub.b"]]


def test_the_checker_passes_a_tree_that_only_imports_downwards(tmp_path: Path) -> None:
    edges = _imports_of_tree(tmp_path, {"__init__.py": "", "a.py": "from . import b\n", "b.py": "import json\n"})
    assert cycles(edges) == []
