"""`config check` rejects configs that would load and then fail, and says how to fix the ones it rejects."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from aibox_router.cli import main
from aibox_router.cli.common import default_config_path
from aibox_router.config_checks import config_warnings
from aibox_router.config_load import load_config, parse_config
from aibox_router.errors import ConfigError


def base() -> dict:
    data = yaml.safe_load(Path(default_config_path()).read_text())
    data["server"]["state_dir"] = "/tmp/unused"
    return data


def rejected(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cfg.yml", env={})
    return str(info.value)


def test_unknown_key_names_the_path_the_allowed_keys_and_the_nearest_match():
    data = base()
    data["default_targt"] = data.pop("default_target")
    msg = rejected(data)
    assert "default_targt: unknown key; did you mean 'default_target'?" in msg
    assert "allowed keys here:" in msg and "override_header" in msg
    data = base()
    data["targets"]["coder"]["fallbak"] = data["targets"]["coder"].pop("fallback")
    assert "targets.coder.fallbak: unknown key; did you mean 'fallback'?" in rejected(data)
    data = base()
    data["budgets"]["dayly_budget"] = 5
    assert "budgets.dayly_budget: unknown key; did you mean 'daily_budget'?" in rejected(data)


def test_an_enum_error_lists_the_values():
    data = base()
    data["backends"]["cloud"]["type"] = "claude"
    assert "backends.cloud.type: 'claude' is not one of the allowed values: 'anthropic', 'ollama', 'openai'" \
        in rejected(data)
    data = base()
    data["server"]["log_level"] = "verbose"
    assert "'debug', 'info', 'warning', 'error'" in rejected(data)


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d["backends"].update(llama={"type": "openai", "base_url": "http://127.0.0.1:8080"}),
     "backends.llama.base_url: an openai backend's URL must end in /v1"),
    (lambda d: d["server"].update(port=0), "server.port: expected a port between 1 and 65535, found 0"),
    (lambda d: d["backends"]["ollama"].update(read_timeout_s=-5), "backends.ollama.read_timeout_s"),
    (lambda d: d["backends"]["cloud"].update(connect_timeout_s=0), "backends.cloud.connect_timeout_s"),
    (lambda d: d["clients"][0].update(daily_budget=-1), "clients[0].daily_budget: client 'claude-code'"),
    (lambda d: d["clients"][0].update(daily_budget=25), "more than budgets.daily_budget $10.00"),
    (lambda d: d["budgets"].update(alert_threshold=-1, daily_budget=-1, emergency_cutoff=-1),
     "budgets.daily_budget: expected an amount >= 0"),
])
def test_values_that_would_fail_at_request_time_are_rejected(change, expected):
    data = base()
    change(data)
    assert expected in rejected(data)


def test_a_client_budget_within_the_daily_budget_is_fine():
    data = base()
    data["clients"][0]["daily_budget"] = 10.0
    parse_config(data, "cfg.yml", env={})


def test_duplicate_yaml_keys_are_rejected_with_both_lines(tmp_path):
    path = tmp_path / "dup.yml"
    path.write_text(Path(default_config_path()).read_text() + "\ndefault_target: coder\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "duplicate key 'default_target'" in str(info.value) and "first defined on line" in str(info.value)


def test_an_empty_file_is_called_empty(tmp_path):
    path = tmp_path / "empty.yml"
    path.write_text("# nothing yet\n")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 1 and "is empty" in result.output


def test_unset_api_key_env_is_a_warning_in_check_and_an_error_with_strict(tmp_path, monkeypatch):
    cfg = parse_config(base(), "cfg.yml", env={})
    assert any("ANTHROPIC_API_KEY is not set" in w for w in config_warnings(cfg, env={}))
    assert not [w for w in config_warnings(cfg, env={"ANTHROPIC_API_KEY": "k"}) if "api_key_env" in w]
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(base()))
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 0 and "warning:" in result.stderr and "ANTHROPIC_API_KEY" in result.stderr
    assert CliRunner().invoke(main, ["config", "check", "--strict", str(path)]).exit_code == 2


def test_config_check_takes_dash_c_and_the_environment_variable(tmp_path):
    path = tmp_path / "c.yml"
    data = base()
    data["server"]["port"] = 0
    path.write_text(yaml.safe_dump(data))
    for args, env in ((["config", "check", "-c", str(path)], {}),
                      (["config", "check"], {"AIBOX_ROUTER_CONFIG": str(path)})):
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 1 and "server.port" in result.output, result.output
