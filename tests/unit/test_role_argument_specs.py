"""Every role's meta/argument_specs.yml must list exactly the variables in its defaults/main.yml.

A default without a spec escapes validation and documentation; a spec without a default is a
variable the role silently ignores, unless the spec marks it required (an input another role or the
playbook must pass, such as cost_cron_router). Nested option specs (e.g. models_list entries) are not
compared. The internal role common has no defaults: each of its task files is an entry point whose
variables must all be declared, and nothing else.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROLES_DIR = Path(__file__).resolve().parents[2] / "roles"
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if (p / "defaults" / "main.yml").is_file())


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def test_roles_found() -> None:
    assert {"nvidia", "ollama", "models", "router", "cost_cron"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_match_defaults(role: str) -> None:
    defaults = set(_load(ROLES_DIR / role / "defaults" / "main.yml"))
    spec_file = ROLES_DIR / role / "meta" / "argument_specs.yml"
    assert spec_file.is_file(), f"{role}: meta/argument_specs.yml is missing"
    specs = _load(spec_file)["argument_specs"]["main"].get("options") or {}
    options = {name for name, spec in specs.items() if not spec.get("required")}
    unspecified = sorted(defaults - set(specs))
    required_with_default = sorted(defaults & set(specs) - options)
    spec_only = sorted(options - defaults)
    assert not unspecified, f"{role}: in defaults/main.yml but not in argument_specs: {unspecified}"
    assert not required_with_default, f"{role}: required in argument_specs but has a default: {required_with_default}"
    assert not spec_only, f"{role}: in argument_specs but not in defaults/main.yml: {spec_only}"


@pytest.mark.parametrize("role", ROLES)
def test_argument_spec_options_are_described_and_typed(role: str) -> None:
    options = _load(ROLES_DIR / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    for name, spec in options.items():
        assert spec.get("description"), f"{role}: {name} has no description"
        assert spec.get("type"), f"{role}: {name} has no type"
        assert name.startswith(f"{role}_"), f"{role}: {name} is not prefixed with the role name"


@pytest.mark.parametrize("role", ROLES)
def test_literal_defaults_agree(role: str) -> None:
    """Where the spec states a default, it must equal the one in defaults/main.yml."""
    defaults = _load(ROLES_DIR / role / "defaults" / "main.yml")
    options = _load(ROLES_DIR / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    for name, spec in options.items():
        if "default" in spec:
            assert spec["default"] == defaults[name], (
                f"{role}: {name} defaults to {defaults[name]!r} in defaults/main.yml "
                f"but {spec['default']!r} in argument_specs")


@pytest.mark.parametrize("role", ROLES)
def test_required_inputs_have_no_default(role: str) -> None:
    """A required option with a default would never be required; one in defaults/main.yml neither."""
    defaults = _load(ROLES_DIR / role / "defaults" / "main.yml")
    options = _load(ROLES_DIR / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    for name, spec in options.items():
        if spec.get("required"):
            assert "default" not in spec and name not in defaults, f"{role}: {name} is required but has a default"


COMMON = ROLES_DIR / "common"
COMMON_ENTRY_POINTS = sorted(p.stem for p in (COMMON / "tasks").glob("*.yml"))


def test_common_roles_entry_points_are_the_task_files() -> None:
    specs = _load(COMMON / "meta" / "argument_specs.yml")["argument_specs"]
    assert set(specs) == set(COMMON_ENTRY_POINTS)


@pytest.mark.parametrize("entry_point", COMMON_ENTRY_POINTS)
def test_common_task_files_use_exactly_their_declared_inputs(entry_point: str) -> None:
    """Every _common_* input a shared task file reads is declared (and required), and nothing more.

    Names the file registers or sets itself are outputs, not inputs; a file that imports another
    also reads that file's inputs."""
    def text_of(stem: str) -> str:
        text = (COMMON / "tasks" / f"{stem}.yml").read_text(encoding="utf-8")
        for imported in re.findall(r"import_tasks: (\w+)\.yml", text):
            text += text_of(imported)
        return text

    text = text_of(entry_point)
    registered = set(re.findall(r"register: (_common_\w+)", text))
    outputs = registered | set(re.findall(r"^\s+(_common_\w+):", text, re.MULTILINE))
    read = set(re.findall(r"\b(_common_\w+)\b", text)) - outputs
    options = _load(COMMON / "meta" / "argument_specs.yml")["argument_specs"][entry_point].get("options") or {}
    assert read == set(options), f"common/{entry_point}: reads {sorted(read)}, declares {sorted(options)}"
    assert all(spec.get("required") and spec.get("description") and spec.get("type") for spec in options.values())
