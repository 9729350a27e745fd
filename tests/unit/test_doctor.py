"""``aibox-router doctor``'s parts: where it finds the URL and key, how it masks the key, and what it
says about routers it cannot meet live here. The HTTP answers below (httpx.MockTransport) stand in
for an older router release without ``/mcp`` or ``/aibox/whoami``, and for a model that never
answers; tests/live/test_doctor.py runs the doctor against the real router."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from aibox_router.doctor import Check, find_settings, mask, run_doctor

KEY = "sk-aibox-dana-0f1e2d3c4b5a"
URL = "http://aibox.test:8088"
WHOAMI = {"client": "dana", "targets": [{"name": "small", "model": "qwen", "cloud": False}],
          "default_target": "small", "override_header": "x-aibox-target", "daily_budget_usd": None,
          "mcp_path": "/mcp"}


def write_settings(home: Path, env: dict[str, str], config_dir: Path | None = None) -> None:
    folder = config_dir or home / ".claude"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps({"env": env, "model": "opus"}))


def test_options_beat_environment_beat_settings_file(tmp_path: Path) -> None:
    write_settings(tmp_path, {"ANTHROPIC_BASE_URL": "http://file:1/", "ANTHROPIC_AUTH_TOKEN": "file-key"})
    from_file = find_settings(None, None, {}, tmp_path)
    assert (from_file.url, from_file.key) == ("http://file:1", "file-key")
    assert from_file.url_from == "~/.claude/settings.json (env.ANTHROPIC_BASE_URL)"
    from_env = find_settings(None, None, {"ANTHROPIC_BASE_URL": "http://env:2"}, tmp_path)
    assert (from_env.url, from_env.key) == ("http://env:2", "file-key")
    assert from_env.url_from == "environment (ANTHROPIC_BASE_URL)"
    from_options = find_settings("http://opt:3", "opt-key", {"ANTHROPIC_AUTH_TOKEN": "env-key"}, tmp_path)
    assert (from_options.url, from_options.key, from_options.key_from) == ("http://opt:3", "opt-key", "--key")


def test_claude_config_dir_and_a_broken_settings_file(tmp_path: Path) -> None:
    elsewhere = tmp_path / "cfg"
    write_settings(tmp_path, {"ANTHROPIC_BASE_URL": "http://home:1"})
    write_settings(tmp_path, {"ANTHROPIC_BASE_URL": "http://elsewhere:1"}, elsewhere)
    assert find_settings(None, None, {"CLAUDE_CONFIG_DIR": str(elsewhere)}, tmp_path).url == "http://elsewhere:1"
    (tmp_path / ".claude" / "settings.json").write_text("{not json")
    broken = find_settings(None, None, {}, tmp_path)
    assert broken.url is None and "is not valid JSON" in broken.problems[0]


def test_mask_never_shows_a_usable_part_of_the_key() -> None:
    assert mask(KEY) == "sk-a...5a (26 characters)"
    assert mask("short-key") == "********" and mask(None) == "(none)"


def run(tmp_path: Path, answer: Callable[[httpx.Request], httpx.Response],
        registration: dict[str, Any] | None = None,
        claude_json: dict[str, Any] | None = None) -> tuple[dict[str, Check], int, str]:
    """The checks by name, the exit status and the output, with ~/.claude.json holding *claude_json*
    (default: *registration* as its user-scope MCP servers)."""
    (tmp_path / ".claude.json").write_text(json.dumps(claude_json or {"mcpServers": registration or {}}))
    checks, status = run_doctor(URL, KEY, 5, 5, env={}, home=tmp_path, transport=httpx.MockTransport(answer))
    output = "\n".join(c.line() for c in checks)
    assert KEY not in output
    return {c.name: c for c in checks}, status, output


def older_router(request: httpx.Request) -> httpx.Response:
    """A router release that answers the API and whoami but serves no /mcp."""
    if request.url.path == "/health":
        return httpx.Response(200, json={"status": "ok"})
    if request.url.path == "/aibox/whoami":
        assert request.headers["authorization"] == f"Bearer {KEY}"
        return httpx.Response(200, json=WHOAMI)
    if request.url.path == "/v1/messages":
        assert request.headers["x-aibox-target"] == "small"
        return httpx.Response(200, json={"content": [{"type": "text", "text": "ok"}]},
                              headers={"x-aibox-target": "small", "x-aibox-model": "qwen"})
    error = {"type": "not_found_error", "message": f"No such endpoint: {request.url.path}"}
    return httpx.Response(404, json={"type": "error", "error": error})


def test_router_without_mcp(tmp_path: Path) -> None:
    checks, status, output = run(tmp_path, older_router)
    assert status == 1, output
    assert checks["mcp"].status == "FAIL" and "upgrade" in checks["mcp"].fix
    assert checks["round trip"].status == "ok"
    assert "'ok' from target small (model qwen)" in checks["round trip"].detail
    assert checks["claude mcp"].status == "warn" and "claude mcp add" in checks["claude mcp"].fix


def test_router_without_whoami(tmp_path: Path) -> None:
    def oldest(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        return httpx.Response(404, json={"type": "error", "error": {"message": "No such endpoint"}})

    checks, status, output = run(tmp_path, oldest)
    assert status == 1 and checks["key"].status == "FAIL" and "upgrade" in checks["key"].fix, output
    assert [checks[n].status for n in ("targets", "mcp", "round trip")] == ["skip"] * 3


def test_a_model_that_does_not_answer_in_time(tmp_path: Path) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/messages":
            raise httpx.ReadTimeout("timed out", request=request)
        return older_router(request)

    checks, status, _ = run(tmp_path, slow)
    assert status == 1 and checks["round trip"].status == "FAIL"
    assert "may still be loading" in checks["round trip"].fix


def test_registration_with_another_key_is_a_warning(tmp_path: Path) -> None:
    old_key = {"Authorization": "Bearer sk-old-key-000000"}
    stale = {"aibox": {"type": "http", "url": f"{URL}/mcp", "headers": old_key}}
    checks, _, _ = run(tmp_path, older_router, stale)
    assert checks["claude mcp"].status == "warn" and "with another key" in checks["claude mcp"].detail
    current = {"aibox": {"type": "http", "url": f"{URL}/mcp/", "headers": {"x-api-key": KEY}}}
    checks, _, _ = run(tmp_path, older_router, current)
    assert checks["claude mcp"].status == "ok"


def test_a_registration_for_one_project_only_is_a_warning(tmp_path: Path) -> None:
    """`claude mcp add` without --scope writes the entry under the folder it ran in."""
    entry = {"type": "http", "url": f"{URL}/mcp", "headers": {"Authorization": f"Bearer {KEY}"}}
    one_project = {"projects": {"/src/app": {"mcpServers": {"aibox": entry}}}}
    checks, _, _ = run(tmp_path, older_router, claude_json=one_project)
    registration = checks["claude mcp"]
    assert registration.status == "warn" and "only for /src/app" in registration.detail
    assert "--scope user" in registration.fix


@pytest.mark.parametrize("url", ["aibox:8088", "ftp://aibox"])
def test_a_url_without_http_scheme_fails_settings(tmp_path: Path, url: str) -> None:
    checks, status = run_doctor(url, KEY, 5, 5, env={}, home=tmp_path)
    assert status == 1 and checks[0].status == "FAIL" and "http(s) URL" in checks[0].detail
    assert all(c.status == "skip" for c in checks[1:])
