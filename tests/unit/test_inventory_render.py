"""The real inventory rendered into the router's config and cron file, as the roles template them.

Runs ansible-playbook with tests/support/render_router_config.yml (connection: local, nothing is
contacted), then checks the result with the router's own `config check`: the LAN is served with
client keys, one entry adds a developer, targets inherit their backend's defaults, the daily report
is scheduled only where it goes somewhere, the Ollama URL follows ollama_host (the local_url filter),
and a budget for an unknown client is refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from aibox_router.cli import main
from aibox_router.cli.common import default_config_path
from aibox_router.config_load import interpolate_env

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "tests" / "support" / "render_router_config.yml"
KEYS = {"claude-code": "claude-code-key-0123456789", "alice": "alice-key-0123456789abcdef"}


def render(tmp_path: Path, extra: dict) -> subprocess.CompletedProcess[str]:
    ansible = Path(sys.executable).parent / "ansible-playbook"
    return subprocess.run([str(ansible), "-i", str(REPO / "inventory" / "hosts.yml"), str(PLAYBOOK),
                           "-e", f"render_dir={tmp_path}",
                           "-e", json.dumps({"vault_router_client_keys": KEYS, **extra})],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=300)


def cron_jobs(tmp_path: Path) -> list[str]:
    return [ln for ln in (tmp_path / "aibox-router.cron").read_text().splitlines()
            if ln and not ln.startswith("#") and "aibox-router " in ln]


def test_the_default_inventory_serves_the_lan_with_keys_and_inherited_target_settings(tmp_path: Path) -> None:
    run = render(tmp_path, {})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Found both group and host" not in run.stdout + run.stderr
    check = CliRunner().invoke(main, ["config", "check", str(tmp_path / "config.yml")])
    assert check.exit_code == 0, check.output
    cfg = yaml.safe_load((tmp_path / "config.yml").read_text())
    assert cfg["server"]["host"] == "0.0.0.0"
    assert cfg["clients"] == [{"name": "claude-code", "key": KEYS["claude-code"], "daily_budget": 10.0}]
    targets = cfg["targets"]
    assert targets["coder"]["num_ctx"] == 32768 and targets["coder"]["keep_alive"] == "30m"  # inherited
    assert targets["fast"]["num_ctx"] == 16384  # its own value wins
    assert "num_ctx" not in targets["claude"]  # cloud targets inherit nothing of Ollama's
    daemon = yaml.safe_load(Path(default_config_path()).read_text())
    assert targets["claude"]["model"] == daemon["targets"]["claude"]["model"]  # one model name everywhere
    # The routing plan is the router's own, read from its shipped file (one copy, no drift).
    assert targets == daemon["targets"]
    for key in ("aliases", "rules", "routes", "default_target"):
        assert cfg[key] == daemon[key], key
    shipped_embeddings = interpolate_env(daemon["routing"]["embeddings"], env={})
    assert cfg["routing"]["embeddings"] == shipped_embeddings
    assert {name: b["type"] for name, b in cfg["backends"].items()} == \
        {name: b["type"] for name, b in daemon["backends"].items()}
    assert cfg["budgets"]["reserve_output_tokens_cap"] == daemon["budgets"]["reserve_output_tokens_cap"]
    # ollama_host -> models_ollama_url -> router_ollama_url, through the local_url filter plugin.
    assert cfg["backends"]["ollama"]["base_url"] == "http://127.0.0.1:11434"
    jobs = cron_jobs(tmp_path)
    assert len(jobs) == 1 and "cutoff check" in jobs[0]  # no mail, no alert channel: no report job


def test_one_entry_adds_a_developer_and_a_mailto_schedules_yesterdays_report(tmp_path: Path) -> None:
    run = render(tmp_path, {"router_clients": [{"name": "claude-code", "daily_budget": 10.0},
                                               {"name": "alice", "daily_budget": 2.5}],
                            "budgets_mailto": "ops@example.org"})
    assert run.returncode == 0, run.stdout + run.stderr
    cfg = yaml.safe_load((tmp_path / "config.yml").read_text())
    assert {"name": "alice", "key": KEYS["alice"], "daily_budget": 2.5} in cfg["clients"]
    assert CliRunner().invoke(main, ["config", "check", str(tmp_path / "config.yml")]).exit_code == 0
    report = [j for j in cron_jobs(tmp_path) if " report " in j]
    assert len(report) == 1 and report[0].endswith("report -c /etc/aibox-router/config.yml --date yesterday")
    assert 'MAILTO="ops@example.org"' in (tmp_path / "aibox-router.cron").read_text()


def test_an_alert_webhook_sends_the_report_through_it(tmp_path: Path) -> None:
    run = render(tmp_path, {"router_alerts_webhook_url": "http://127.0.0.1:9/hook"})
    assert run.returncode == 0, run.stdout + run.stderr
    report = [j for j in cron_jobs(tmp_path) if " report " in j]
    assert len(report) == 1 and report[0].endswith("--date yesterday --send")


def test_ollama_on_the_ipv6_wildcard_is_reached_on_the_ipv6_loopback(tmp_path: Path) -> None:
    # The inventory's models_ollama_url renders through filter_plugins/aibox_net.py (local_url).
    run = render(tmp_path, {"ollama_host": "::", "ollama_port": 11500})
    assert run.returncode == 0, run.stdout + run.stderr
    cfg = yaml.safe_load((tmp_path / "config.yml").read_text())
    assert cfg["backends"]["ollama"]["base_url"] == "http://[::1]:11500"
    assert CliRunner().invoke(main, ["config", "check", str(tmp_path / "config.yml")]).exit_code == 0


@pytest.mark.parametrize(("extra", "expected"), [
    ({"budgets_clients": {"bob": 3.0}}, "has budgets for ['bob'], which are not in router_clients"),
    ({"router_clients": [{"name": "claude-code"}, {"name": "carol"}]}, "missing or too short for: carol"),
])
def test_the_preflight_refuses_what_would_be_dropped_silently(tmp_path: Path, extra: dict, expected: str) -> None:
    run = render(tmp_path, extra)
    assert run.returncode != 0 and expected in run.stdout, run.stdout
    assert not (tmp_path / "config.yml").exists()
