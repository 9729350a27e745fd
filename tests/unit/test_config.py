"""Config loading: valid files load; every error names the file, the key path and what is expected."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from aibox_router.cli.common import default_config_path
from aibox_router.config_load import load_config, parse_config
from aibox_router.errors import ConfigError

DEFAULT = yaml.safe_load(Path(default_config_path()).read_text())


def with_changes(**paths):
    data = copy.deepcopy(DEFAULT)
    for dotted, value in paths.items():
        node = data
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        last = keys[-1]
        node[int(last) if last.isdigit() else last] = value
    return data


def error_of(data, env=None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "router.yml", env=env or {})
    return str(info.value)


def test_embedded_default_config_is_valid_and_matches_the_users_plan():
    cfg = load_config(default_config_path(), env={})
    assert cfg.budgets.daily_budget == 10.0
    assert cfg.budgets.alert_threshold == 8.0
    assert cfg.budgets.emergency_cutoff == 12.0
    reserved = next(r for r in cfg.rules if r.target == "claude")
    assert reserved.daily_limit == 400
    for route in ("architecture", "troubleshooting", "planning", "cross_codebase"):
        assert f'"{route}"' in reserved.when and route in {r.name for r in cfg.routes}
    keywords = next(r for r in cfg.rules if r.name == "hard-by-keywords")
    assert keywords.target == "claude" and "complexity > 8" in keywords.when
    assert cfg.default_target in cfg.targets and not cfg.target_is_cloud(cfg.default_target)


def test_type_error_names_key_path_and_file():
    msg = error_of(with_changes(budgets__daily_budget="ten dollars"))
    assert msg.startswith("router.yml: budgets.daily_budget:")
    assert "Expected `float`" in msg


def test_unknown_key_is_rejected_with_its_path():
    data = with_changes()
    data["targets"]["coder"]["num_ctxx"] = 4096
    msg = error_of(data)
    assert "targets.coder" in msg and "num_ctxx" in msg


def test_reference_errors_list_every_problem_with_expected_values():
    msg = error_of(with_changes(rules__1__target="nowhere", default_target="missing"))
    assert "2 problems" in msg
    assert "rules[1].target: unknown target 'nowhere'" in msg
    assert "default_target: unknown target 'missing'" in msg
    assert "expected one of ['claude', 'coder', 'fast', 'general']" in msg


def test_rule_expression_with_unknown_feature_is_a_config_error():
    msg = error_of(with_changes(rules__0__when="complexty > 3"))
    assert "rules[0].when" in msg and "'complexty' is undefined" in msg


def test_rule_expression_syntax_error_is_a_config_error():
    assert "rules[2].when: invalid expression" in error_of(with_changes(rules__2__when="task ==="))


def test_sandbox_refuses_unsafe_expressions():
    msg = error_of(with_changes(rules__0__when="model.__class__.__mro__"))
    assert "rules[0].when" in msg


def test_cloud_model_without_price_is_an_error_not_a_silent_zero():
    data = with_changes(targets__claude__model="claude-mystery-9")
    assert "targets.claude.model: no entry in prices matches cloud model 'claude-mystery-9'" in error_of(data)


def test_budget_thresholds_must_be_ordered():
    msg = error_of(with_changes(budgets__alert_threshold=11.0))
    assert "alert_threshold <= daily_budget <= emergency_cutoff" in msg


def test_unknown_time_zone():
    error = error_of(with_changes(budgets__timezone="Mars/Olympus"))
    assert "budgets.timezone: unknown time zone 'Mars/Olympus'" in error


def test_env_interpolation_and_missing_variable():
    data = with_changes(clients__0__key="${MY_CLIENT_KEY}")
    cfg = parse_config(data, "router.yml", env={"MY_CLIENT_KEY": "k" * 32})
    assert cfg.clients[0].key == "k" * 32
    msg = error_of(data)
    assert "clients[0].key: environment variable MY_CLIENT_KEY is not set" in msg


def test_short_client_key_rejected():
    assert "shorter than 16" in error_of(with_changes(clients__0__key="abc"))


def test_unreadable_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("rules: [\n")
    with pytest.raises(ConfigError, match=r"bad.yml: not valid YAML"):
        load_config(bad)


def test_budget_defaults_come_from_the_shipped_file_and_a_config_overrides_key_by_key():
    """The budget numbers have one home, the shipped config's `budgets` (the Ansible role reads it too);
    a config without `budgets`, or with some of its keys, gets the rest from there."""
    shipped = DEFAULT["budgets"]
    bare = {k: v for k, v in copy.deepcopy(DEFAULT).items() if k != "budgets"}
    cfg = parse_config(bare, env={})
    assert {k: getattr(cfg.budgets, k) for k in shipped} == shipped
    partial = parse_config({**bare, "budgets": {"timezone": "Europe/Berlin", "daily_budget": 11}}, env={})
    assert partial.budgets.timezone == "Europe/Berlin" and partial.budgets.daily_budget == 11
    assert partial.budgets.emergency_cutoff == shipped["emergency_cutoff"]
    assert "budgets: Expected `object`" in error_of({**bare, "budgets": [1]})
