"""Every role's meta/argument_specs.yml must list exactly the variables in its defaults/main.yml.

A default without a spec escapes validation and documentation; a spec without a default is a
variable the role silently ignores. Nested option specs (e.g. models_list entries) are not compared.
"""

from __future__ import annotations

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
    options = set(_load(spec_file)["argument_specs"]["main"].get("options") or {})
    only_defaults, only_specs = sorted(defaults - options), sorted(options - defaults)
    assert not only_defaults, f"{role}: in defaults/main.yml but not in argument_specs: {only_defaults}"
    assert not only_specs, f"{role}: in argument_specs but not in defaults/main.yml: {only_specs}"


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
