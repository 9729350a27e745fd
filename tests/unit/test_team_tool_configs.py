"""What the team deploy merges into each tool's config (deploy/tool_configs.py) and how it reads the
team inventory (deploy/team.py): merging keeps the user's settings, a second merge changes nothing,
offboarding gives back what was there, and a wrong inventory is refused with the entry and the fix.
The deploy itself runs for real in tests/live/test_team_deploy.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deploy import tool_configs as tc
from deploy.team import TeamError, load_team, read_key

EP = tc.Endpoint(router_url="http://10.0.0.5:8088", key="k" * 40, override_header="x-aibox-target",
                 targets=[("claude", True, ["chat", "edit"]), ("fast", False, ["chat", "autocomplete"])])

MERGES = [
    (tc.claude_settings_onboard, tc.claude_settings_offboard, json.loads,
     [None, '{"theme": "dark", "env": {"EDITOR": "vim", "ANTHROPIC_BASE_URL": "http://old"}}']),
    (tc.claude_json_onboard, tc.claude_json_offboard, json.loads,
     [None, '{"numStartups": 2, "mcpServers": {"mine": {"type": "stdio", "command": "x"}}}']),
    (tc.claude_md_onboard, tc.claude_md_offboard, str, [None, "# Mine\n\nBe brief.\n"]),
    (tc.continue_onboard, tc.continue_offboard, yaml.safe_load,
     [None, "name: mine\nversion: 0.0.1\nschema: v1\nmodels:\n- {name: x, provider: ollama, model: m}\n"]),
]


@pytest.mark.parametrize(("onboard", "offboard", "parse", "existing"),
                         [(on, off, parse, text) for on, off, parse, texts in MERGES for text in texts])
def test_onboarding_is_idempotent_and_offboarding_gives_back_the_users_part(onboard, offboard, parse,
                                                                            existing):
    once = onboard(existing, EP)
    assert onboard(once, EP) == once
    back = offboard(once)
    if existing is None:
        assert back is None  # the deploy created the file: it goes again
    elif onboard is tc.claude_settings_onboard:
        # ANTHROPIC_BASE_URL is the deploy's variable: the user's old value is replaced, then removed
        assert parse(back) == {"theme": "dark", "env": {"EDITOR": "vim"}}
    else:
        assert parse(back) == parse(existing)


def test_the_settings_env_points_claude_code_at_the_router_with_the_key() -> None:
    env = json.loads(tc.claude_settings_onboard('{"env": {"EDITOR": "vim"}}', EP))["env"]
    assert env == {"EDITOR": "vim", "ANTHROPIC_BASE_URL": "http://10.0.0.5:8088",
                   "ANTHROPIC_AUTH_TOKEN": "k" * 40, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}


def test_claude_md_names_local_and_cloud_targets_and_the_override_header() -> None:
    text = tc.claude_md_onboard(None, EP)
    assert "Local models you may use: fast." in text and "Claude targets you may use: claude." in text
    assert "ANTHROPIC_CUSTOM_HEADERS='x-aibox-target: claude' claude" in text
    local_only = tc.Endpoint(EP.router_url, EP.key, EP.override_header, [("fast", False, ["chat"])])
    assert "ANTHROPIC_CUSTOM_HEADERS" not in tc.claude_md_onboard(None, local_only)


def test_continue_gets_one_openai_model_per_allowed_target_with_its_roles() -> None:
    models = yaml.safe_load(tc.continue_onboard(None, EP))["models"]
    assert models == [
        {"name": "aibox claude", "provider": "openai", "model": "claude", "apiBase": "http://10.0.0.5:8088/v1",
         "apiKey": "k" * 40, "roles": ["chat", "edit"]},
        {"name": "aibox fast", "provider": "openai", "model": "fast", "apiBase": "http://10.0.0.5:8088/v1",
         "apiKey": "k" * 40, "roles": ["chat", "autocomplete"]}]


def test_a_broken_user_file_is_named_not_overwritten() -> None:
    with pytest.raises(ValueError, match=r"~/.claude/settings.json is not valid JSON"):
        tc.claude_settings_onboard("{not json", EP)
    with pytest.raises(ValueError, match=r"~/.claude.json must hold a JSON object"):
        tc.claude_json_onboard("[]", EP)


def write_team(tmp_path: Path, developers: list, **extra) -> Path:
    path = tmp_path / "team.yml"
    path.write_text(yaml.safe_dump({"team_router_url": "http://10.0.0.5:8088/", "team_developers": developers,
                                    **extra}))
    return path


def test_the_repositorys_team_file_loads_with_the_routers_targets() -> None:
    team = load_team(Path(__file__).resolve().parents[2] / "inventory" / "group_vars" / "aibox" / "team.yml")
    assert list(team.targets) == ["claude", "coder", "general", "fast"]
    assert team.targets["fast"].continue_roles == ("chat", "autocomplete") and team.targets["claude"].is_cloud
    assert team.override_header == "x-aibox-target"


def test_a_developers_targets_limit_what_the_deploy_offers(tmp_path: Path) -> None:
    team = load_team(write_team(tmp_path, [{"name": "ed", "machine": "h", "targets": ["fast", "coder"]}]))
    assert team.router_url == "http://10.0.0.5:8088"
    assert [t.name for t in team.allowed_targets(team.developer("ed"))] == ["coder", "fast"]


@pytest.mark.parametrize(("developers", "extra", "message"), [
    ([{"name": "ed", "machine": "h", "targets": ["gpt5"]}], {}, "targets ['gpt5'] are not router targets"),
    ([{"name": "ed", "machine": "h"}, {"name": "ed", "machine": "g"}], {}, "'ed' is listed twice"),
    ([{"name": "bad name", "machine": "h"}], {}, "name must be letters"),
    ([{"name": "ed"}], {}, "machine must be an SSH host or \"@local\""),
    ([], {"team_continue_roles": {"nope": ["chat"]}}, "team_continue_roles names ['nope']"),
])
def test_a_wrong_team_file_is_refused_with_the_entry(tmp_path: Path, developers, extra, message) -> None:
    path = write_team(tmp_path, developers, **extra)
    with pytest.raises(TeamError) as err:
        load_team(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_the_key_is_read_from_the_password_lookups_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AIBOX_CREDENTIALS_DIR", str(tmp_path))
    (tmp_path / "ed.key").write_text("A" * 40 + "\n")
    assert read_key("ed") == "A" * 40
    (tmp_path / "short.key").write_text("abc\n")
    with pytest.raises(TeamError, match="16 or more characters"):
        read_key("short")
    with pytest.raises(TeamError, match=r"no key for .gone. at .*gone.key: run `ansible-playbook"):
        read_key("gone")
