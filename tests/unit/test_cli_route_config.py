"""`aibox-router route explain` and `config check` as an operator runs them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml
from click.testing import CliRunner

from aibox_router.accounting import RequestRecord
from aibox_router.cli import main
from aibox_router.cli.common import default_config_path
from aibox_router.cost import LedgerRow, SqliteLedger, day_of

PATTERN_REQUEST = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 100, "messages": [
    {"role": "user", "content": "Find all similar patterns across the logs"}]})


def write_config(tmp_path: Path) -> Path:
    data = yaml.safe_load(Path(default_config_path()).read_text())
    data["server"]["state_dir"] = str(tmp_path / "state")
    path = tmp_path / "router.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_explain_prints_each_rule_verdict_and_the_chain(tmp_path):
    cfg = write_config(tmp_path)
    result = CliRunner().invoke(main, ["route", "explain", "-c", str(cfg)], input=PATTERN_REQUEST)
    assert result.exit_code == 0, result.output
    assert "task=pattern_recognition" in result.output
    assert "MATCH claude-reserved" in result.output
    assert "answers: target claude -> backend cloud model claude-sonnet-4-6 (cloud, budget permitting)" in result.output
    assert "fallback 1: target general" in result.output
    assert not (tmp_path / "state").exists()  # a dry run creates nothing


def test_explain_reads_daily_limit_counts_from_the_ledger(tmp_path):
    cfg = write_config(tmp_path)
    store = SqliteLedger.in_state_dir(tmp_path / "state")
    day = day_of(time.time(), ZoneInfo("UTC"))
    for _ in range(400):
        record = RequestRecord(ts=time.time(), client="c", rule="claude-reserved", target="claude", backend="cloud",
                               model="claude-sonnet-4-6", protocol="anthropic", stream=False, cloud=True)
        store.insert(LedgerRow.from_record(record, day=day, cost_usd=record.cost_usd), durable=False)
    store.close()
    result = CliRunner().invoke(main, ["route", "explain", "-c", str(cfg), "--json"], input=PATTERN_REQUEST)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["decision"]["rule"] != "claude-reserved"
    assert any("daily_limit reached (400/400)" in r["note"] for r in out["rules"])


def test_explain_rejects_a_bad_body_with_the_field(tmp_path):
    result = CliRunner().invoke(main, ["route", "explain", "-c", str(write_config(tmp_path))],
                                input='{"model": "m", "messages": "nope", "max_tokens": 5}')
    assert result.exit_code != 0 and "invalid request body" in result.output and "messages" in result.output


def test_openai_bodies_can_be_explained(tmp_path):
    body = json.dumps({"model": "coder", "messages": [{"role": "user", "content": "hi"}]})
    result = CliRunner().invoke(main, ["route", "explain", "--protocol", "openai", "-c",
                                       str(write_config(tmp_path))], input=body)
    assert result.exit_code == 0 and "answers: target coder" in result.output


def test_config_check_ok_and_error_exit_codes(tmp_path):
    good = write_config(tmp_path)
    ok = CliRunner().invoke(main, ["config", "check", str(good)])
    assert ok.exit_code == 0 and "OK" in ok.output
    bad = tmp_path / "bad.yml"
    data = yaml.safe_load(good.read_text())
    data["rules"][0]["target"] = "nowhere"
    bad.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["config", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}: rules[0].target: unknown target 'nowhere'" in result.output


def test_serve_refuses_an_unusable_state_dir_with_the_key_and_reason(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    data = yaml.safe_load(Path(default_config_path()).read_text())
    data["server"]["state_dir"] = str(blocker / "state")
    cfg = tmp_path / "router.yml"
    cfg.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["serve", "-c", str(cfg)])
    assert result.exit_code == 1
    assert f"{cfg}: server.state_dir {blocker / 'state'}: cannot create it" in result.output


def test_explain_detects_the_protocol_from_the_body(tmp_path):
    from aibox_router.cli.route import detect_protocol

    cfg = write_config(tmp_path)
    openai_body = json.dumps({"model": "coder", "messages": [{"role": "system", "content": "be brief"},
                                                             {"role": "user", "content": "Fix this bug"}]})
    result = CliRunner().invoke(main, ["route", "explain", "-c", str(cfg), "--json"], input=openai_body)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["features"]["protocol"] == "openai"
    assert "protocol openai (detected" in result.stderr
    assert detect_protocol(PATTERN_REQUEST.encode()) == "anthropic"
    assert detect_protocol(b'{"model": "m", "messages": [], "stream_options": {"include_usage": true}}') == "openai"
    assert detect_protocol(b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}') == "openai"


def test_every_option_of_every_command_has_help_text():
    import click

    ctx = click.Context(main)

    def commands(cmd, path):
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                yield from commands(cmd.get_command(ctx, name), [*path, name])
        else:
            yield " ".join(path), cmd

    found = list(commands(main, []))
    assert len(found) >= 10
    missing = [f"{path} {p.opts[0]}" for path, cmd in found for p in cmd.params
               if isinstance(p, click.Option) and not p.hidden and not p.help]
    assert not missing, f"options without help text: {missing}"
    assert all(cmd.help for _, cmd in found)
