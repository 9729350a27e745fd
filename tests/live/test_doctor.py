"""``aibox-router doctor`` as a developer runs it: a real router process on loopback with the REAL
local model behind it (llama.cpp serving SmolLM2-135M), the doctor as its own process with a
temporary HOME holding what the team deploy writes (``~/.claude/settings.json``'s ``env`` block,
the MCP entry in ``~/.claude.json``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live.test_mcp_http import ALICE_KEY, router_config
from tests.support.router_process import RouterProcess, free_port


@pytest.fixture(scope="module")
def router(llama_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    with RouterProcess(router_config(llama_url), tmp_path_factory.mktemp("doctor-router")) as process:
        yield process


def developer_home(tmp_path: Path, url: str, key: str, registered: bool = True) -> Path:
    """A HOME as the team deploy leaves it (settings env block, user-scope MCP registration)."""
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / "settings.json").write_text(json.dumps({
        "env": {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_AUTH_TOKEN": key}, "theme": "dark"}))
    servers = {"aibox": {"type": "http", "url": f"{url}/mcp", "headers": {"Authorization": f"Bearer {key}"}}}
    (home / ".claude.json").write_text(json.dumps({"mcpServers": servers if registered else {}}))
    return home


def doctor(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """Exit status, each check's line by check name, and the whole output."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("ANTHROPIC_", "CLAUDE_")) and "proxy" not in k.lower()}
    command = [sys.executable, "-m", "aibox_router", "doctor", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**clean, "HOME": str(home), **(env or {})}, check=False)
    output = done.stdout + done.stderr
    lines = {line[6:18].strip(): line for line in done.stdout.splitlines()}
    return done.returncode, lines, output


def test_all_checks_pass_with_what_the_deploy_writes(router: RouterProcess, tmp_path: Path) -> None:
    status, lines, output = doctor(developer_home(tmp_path, router.url, ALICE_KEY))
    assert status == 0, output
    assert [line[:4].strip() for line in lines.values()] == ["ok"] * 7, output
    assert "from ~/.claude/settings.json (env.ANTHROPIC_BASE_URL)" in lines["settings"]
    assert "you are client 'alice'" in lines["key"]
    assert "small (local, smollm2)" in lines["targets"]
    assert "claude (cloud, claude-sonnet-4-6)" in lines["targets"]
    assert "ask_local, list_local_models, usage_report" in lines["mcp"]
    assert "from target small (model smollm2)" in lines["round trip"]
    assert "registers 'aibox'" in lines["claude mcp"]
    assert ALICE_KEY not in output


def test_a_bad_key_fails_and_is_never_printed(router: RouterProcess, tmp_path: Path) -> None:
    wrong = "sk-aibox-revoked-key-7c51a9e3"
    status, lines, output = doctor(developer_home(tmp_path, router.url, wrong))
    assert status == 1, output
    assert lines["key"].startswith("FAIL") and "Invalid API key" in lines["key"] and "fix:" in lines["key"]
    assert all(lines[name].startswith("skip") for name in ("targets", "mcp", "round trip")), output
    assert wrong not in output and "sk-a...e3" in lines["key"]


def test_environment_and_options_override_the_settings_file(router: RouterProcess, tmp_path: Path) -> None:
    home = developer_home(tmp_path, "http://127.0.0.1:9", "sk-aibox-stale-key-000000", registered=False)
    status, lines, output = doctor(home, env={"ANTHROPIC_BASE_URL": router.url,
                                              "ANTHROPIC_AUTH_TOKEN": ALICE_KEY})
    assert status == 0, output  # the missing registration is a warning, not a failure
    assert "environment (ANTHROPIC_BASE_URL)" in lines["settings"]
    assert lines["claude mcp"].startswith("warn") and "claude mcp add --scope user --transport http" in output
    status, lines, output = doctor(home, "--url", router.url, "--key", "sk-aibox-not-a-client-0000")
    assert status == 1 and lines["key"].startswith("FAIL"), output


def test_router_down(tmp_path: Path) -> None:
    status, lines, output = doctor(developer_home(tmp_path, f"http://127.0.0.1:{free_port()}", ALICE_KEY))
    assert status == 1, output
    assert lines["reachable"].startswith("FAIL") and "Connection refused" in lines["reachable"]
    assert "systemctl status aibox-router" in lines["reachable"]
    assert ALICE_KEY not in output


def test_no_settings_at_all(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    status, lines, output = doctor(tmp_path / "empty")
    assert status == 1 and lines["settings"].startswith("FAIL") and "ANTHROPIC_BASE_URL" in output, output
