"""The operator commands (report, cutoff, budget) against a temp state_dir, via CliRunner."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from click.testing import CliRunner

from aibox_router.cli import main
from aibox_router.config_load import load_config
from aibox_router.cost import CostControl, LedgerRow, SqliteLedger, day_of
from aibox_router.metrics import Metrics

TZ = "Asia/Tokyo"


@pytest.fixture
def hook() -> Iterator[tuple[list[dict[str, Any]], str]]:
    bodies: list[dict[str, Any]] = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield bodies, f"http://127.0.0.1:{server.server_address[1]}/alert"
    server.shutdown()
    server.server_close()


@pytest.fixture
def config(tmp_path: Path, hook: tuple[list[dict[str, Any]], str]) -> Path:
    path = tmp_path / "router.yml"
    path.write_text(yaml.safe_dump({
        "server": {"state_dir": str(tmp_path / "state")},
        "clients": [{"name": "claude-code", "key": "k" * 16, "daily_budget": 5.0}],
        "backends": {"cloud": {"type": "anthropic", "base_url": "http://127.0.0.1:9"},
                     "local": {"type": "ollama", "base_url": "http://127.0.0.1:9"}},
        "targets": {"claude": {"backend": "cloud", "model": "test-cloud"},
                    "coder": {"backend": "local", "model": "qwen"}},
        "default_target": "coder",
        "budgets": {"timezone": TZ, "daily_budget": 10.0, "alert_threshold": 8.0, "emergency_cutoff": 12.0},
        "prices": [{"prefix": "test-cloud", "input": 1.0, "output": 5.0}],
        "alerts": {"webhook": {"url": hook[1]}, "retry_backoff_s": 0.01},
    }))
    return path


def today() -> str:
    return day_of(time.time(), ZoneInfo(TZ))


def add_spend(config: Path, *amounts: str, cloud: bool = True) -> None:
    cfg = load_config(config)
    led = SqliteLedger.in_state_dir(cfg.server.state_dir)
    for a in amounts:
        led.insert(LedgerRow(ts=time.time(), day=today(), client="claude-code", rule="hard",
                             target="claude" if cloud else "coder", backend="cloud" if cloud else "local",
                             model="test-cloud" if cloud else "qwen", protocol="anthropic", stream=False,
                             cloud=cloud, cost_usd=Decimal(a), output_tokens=int(Decimal(a) * 200_000),
                             latency_ms=1200.0))
    led.close()


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_no_ledger_yet_is_fine_and_creates_nothing(config: Path) -> None:
    state = load_config(config).server.state_dir
    r = run("cutoff", "check", "-c", str(config))
    assert r.exit_code == 0 and r.output == ""  # nothing to do: silent, so cron mails nothing
    r = run("cutoff", "check", "-c", str(config), "-v")
    assert r.exit_code == 0 and "nothing spent" in r.output
    r = run("budget", "show", "-c", str(config))
    assert r.exit_code == 0 and "$0.00 of $10.00" in r.output
    r = run("report", "-c", str(config), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["queries"] == 0
    assert not Path(state).exists()


def test_cutoff_check_below_the_limit(config: Path, hook: tuple[list[dict[str, Any]], str]) -> None:
    add_spend(config, "3.5")
    r = run("cutoff", "check", "-c", str(config))
    assert r.exit_code == 0 and r.output == "", r.output  # silent unless it acts
    r = run("cutoff", "check", "-c", str(config), "--verbose")
    assert "ok: cloud spend $3.50" in r.output
    assert hook[0] == []
    assert "not engaged" in run("budget", "show", "-c", str(config)).output


def test_cutoff_check_engages_and_alerts_once(config: Path, hook: tuple[list[dict[str, Any]], str]) -> None:
    add_spend(config, "7", "5.25")  # $12.25 >= $12 emergency cutoff
    r = run("cutoff", "check", "-c", str(config))
    assert r.exit_code == 0, r.output  # engaging is the job working, not a failure
    assert "ENGAGED" in r.output
    assert [b["kind"] for b in hook[0]] == ["alert_threshold", "daily_budget", "emergency_cutoff"]
    assert hook[0][-1]["spend"] == "12.25"
    assert "sent alert_threshold, daily_budget, emergency_cutoff alert(s)" in r.output
    r = run("cutoff", "check", "-c", str(config))
    assert r.exit_code == 0 and r.output == ""  # already engaged, nothing new: silent
    assert "cutoff engaged for" in run("cutoff", "check", "-c", str(config), "-v").output
    assert len(hook[0]) == 3  # one alert per threshold per day
    show = run("budget", "show", "-c", str(config), "--json")
    data = json.loads(show.stdout)
    assert data["cutoff"]["engaged"] is True and data["cutoff"]["by"] == "cutoff check"
    assert data["spend_usd"] == "12.250000" and data["remaining_usd"] == "0.000000"  # money(): one JSON format
    assert data["alerts_sent"] == ["alert_threshold", "daily_budget", "emergency_cutoff"]


def test_cutoff_check_fails_on_bad_config_or_unreadable_ledger(tmp_path: Path, config: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("budgets: {daily_budget: nope}\n")
    r = CliRunner().invoke(main, ["cutoff", "check", "-c", str(bad)])
    assert r.exit_code != 0 and "bad.yml" in r.output
    ledger = Path(load_config(config).server.state_dir) / "ledger.sqlite3"
    ledger.parent.mkdir(parents=True)
    ledger.write_bytes(b"this is not a database" * 100)
    r = CliRunner().invoke(main, ["cutoff", "check", "-c", str(config)])
    assert r.exit_code == 1 and "cannot read the ledger" in r.output


async def test_engage_and_release_reach_a_running_daemon(config: Path) -> None:
    cfg = load_config(config)
    cc = CostControl.open(cfg, metrics=Metrics(), poll_interval_s=0)

    async def admit() -> str:
        a = await cc.admit(target="claude", model="test-cloud", client="claude-code", request={"max_tokens": 100},
                           input_tokens=10)
        return a.refusal or "allowed"

    assert await admit() == "allowed"
    r = run("cutoff", "engage", "-c", str(config), "--reason", "runaway agent")
    assert r.exit_code == 0 and "engaged" in r.output
    assert await admit() == "cutoff"
    assert "ENGAGED by operator" in run("budget", "show", "-c", str(config)).output
    r = run("cutoff", "release", "-c", str(config))
    assert r.exit_code == 0 and "released" in r.output
    assert await admit() == "allowed"
    cc.close()


def test_release_warns_when_spend_is_still_over_the_cutoff(config: Path) -> None:
    add_spend(config, "13")
    run("cutoff", "check", "-c", str(config))
    r = CliRunner().invoke(main, ["cutoff", "release", "-c", str(config)])
    assert r.exit_code == 0
    assert "released" in r.stdout and "engages the cutoff again" in r.stderr


def test_budget_show_per_client(config: Path) -> None:
    add_spend(config, "1.25", "0.5")
    add_spend(config, "9", cloud=False)  # local: not cloud spend
    r = run("budget", "show", "-c", str(config))
    assert r.exit_code == 0
    assert "$1.75 of $10.00  ($8.25 remaining)" in r.output
    assert "client claude-code      $1.75 of $5.00" in r.output
    assert f"budget day       {today()} ({TZ})" in r.output


def test_report_text_json_and_chart(tmp_path: Path, config: Path) -> None:
    add_spend(config, "0.2")
    add_spend(config, "0", "0", "0", "0", cloud=False)
    r = run("report", "-c", str(config), "--json", "--days", "3", "--chart", str(tmp_path / "spend.png"))
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert (data["cloud_calls"], data["local_calls"], data["local_share"]) == (1, 4, 0.8)
    assert data["spend_usd"] == "0.200000" and data["cost_per_query_usd"] == "0.040000"
    assert data["budget_usd"] == "30.000000" and len(data["daily"]) == 3
    assert data["reference_model"] == "test-cloud"
    assert (tmp_path / "spend.png").read_bytes()[:4] == b"\x89PNG"
    text = run("report", "-c", str(config)).output
    assert "[PASS] mostly local" in text and "[PASS] local answers fast" in text
    assert "[PASS] cheap per query" in text
    r = CliRunner().invoke(main, ["report", "-c", str(config), "--date", "2026-13-01"])
    assert r.exit_code == 2 and "YYYY-MM-DD" in r.output


def test_report_date_yesterday_is_the_previous_budget_day(config: Path) -> None:
    from datetime import date, timedelta

    r = run("report", "-c", str(config), "--date", "yesterday", "--json")
    assert r.exit_code == 0, r.output
    yesterday = (date.fromisoformat(today()) - timedelta(days=1)).isoformat()
    data = json.loads(r.stdout)
    assert data["first_day"] == data["last_day"] == yesterday
    r = CliRunner().invoke(main, ["report", "-c", str(config), "--date", "last week"])
    assert r.exit_code == 2 and "today or yesterday" in r.output


def test_report_send_delivers_the_text_through_the_alert_channel(config: Path,
                                                                  hook: tuple[list[dict[str, Any]], str]) -> None:
    add_spend(config, "2.25")
    r = run("report", "-c", str(config), "--send")
    assert r.exit_code == 0 and r.stdout == "", r.output
    assert len(hook[0]) == 1 and hook[0][0]["kind"] == "report"
    assert "$2.25" in hook[0][0]["message"] and today() in hook[0][0]["title"]


def test_report_send_without_a_channel_fails(tmp_path: Path, config: Path) -> None:
    data = yaml.safe_load(config.read_text())
    data.pop("alerts")
    bare = tmp_path / "bare.yml"
    bare.write_text(yaml.safe_dump(data))
    r = CliRunner().invoke(main, ["report", "-c", str(bare), "--send"])
    assert r.exit_code == 1 and "no alert channel" in r.output


def test_report_refuses_an_unpriced_reference_model_and_a_bad_chart_path_before_printing(config: Path,
                                                                                       tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["report", "-c", str(config), "--reference-model", "gpt-9"])
    assert r.exit_code == 2 and "no entry in the config's prices" in r.output and "queries" not in r.stdout
    for chart, why in ((tmp_path / "no-such-dir" / "c.png", "does not exist"), (tmp_path / "c.pdf", ".png or .html")):
        r = CliRunner().invoke(main, ["report", "-c", str(config), "--chart", str(chart)])
        assert r.exit_code == 2 and why in r.output, r.output
        assert "Errno" not in r.output and r.stdout == ""  # refused before the report was printed


def test_budget_commands_without_a_config_or_a_ledger_refuse_to_guess(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIBOX_STATE_DIR", str(tmp_path / "nowhere"))
    monkeypatch.delenv("AIBOX_ROUTER_CONFIG", raising=False)
    for args in (["budget", "show"], ["cutoff", "engage"], ["cutoff", "release"], ["report"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1 and "no config given" in r.output, (args, r.output)
    assert not (tmp_path / "nowhere").exists()  # and no stray ledger was created
