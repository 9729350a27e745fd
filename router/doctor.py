"""``aibox-router doctor``: on a developer machine, check the way from this machine's tools to the aibox.

It finds the router's URL and the client key where the team deploy writes them (the environment's
``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_AUTH_TOKEN``, else the ``env`` block of Claude Code's
``~/.claude/settings.json``; ``--url`` / ``--key`` override both), then checks in order: the router
answers, it accepts the key, which targets the key may use, the MCP tools list over ``/mcp``, a short
request round-trips, and (a warning only) Claude Code has the MCP server registered. A check that
needs an earlier one to pass is skipped when that one fails. The key is never printed, only masked.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .mcp_http import MCP_PATH
from .whoami import WHOAMI_PATH

URL_ENV = "ANTHROPIC_BASE_URL"
KEY_ENV = "ANTHROPIC_AUTH_TOKEN"
# Claude Code reads its user settings from here when set (else ~/.claude), and ~/.claude.json too.
CONFIG_DIR_ENV = "CLAUDE_CONFIG_DIR"
MCP_VERSION = "2025-06-18"  # the protocol revision Claude Code's HTTP transport speaks
TEAM_DOC = "docs/team.md"
_UPGRADE = "the aibox runs an older router: ask its admin to upgrade it (re-run site.yml)"
_NO_ANSWER = ("a firewall may be dropping the traffic, or the address is not the aibox's; "
              "check the URL and that this machine may reach the box's router port")
_NO_NAME = "use the aibox's IP address in the URL, or fix DNS / /etc/hosts on this machine"
_NO_CONNECTION = ("check that the aibox is on and reachable from this network, that the router runs there "
                  "(`systemctl status aibox-router` on the box), and that it listens on the LAN "
                  "(server.host is not 127.0.0.1) on this port")
_SEE_LOG = "look at the router's log on the aibox (journalctl -u aibox-router)"
_ONBOARD = ("ask the aibox admin to onboard you (or re-run the team deploy for this machine), "
            f"see {TEAM_DOC}")


@dataclass(frozen=True)
class Check:
    status: str  # "ok", "FAIL", "warn" or "skip"
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<11} {self.detail}"
        return f"{text} -> fix: {self.fix}" if self.fix else text


@dataclass(frozen=True)
class Settings:
    url: str | None
    url_from: str
    key: str | None
    key_from: str
    problems: tuple[str, ...] = ()  # files that could not be read, in words


def claude_dir(env: Mapping[str, str], home: Path) -> Path:
    return Path(env[CONFIG_DIR_ENV]) if env.get(CONFIG_DIR_ENV) else home / ".claude"


def claude_json(env: Mapping[str, str], home: Path) -> Path:
    """Claude Code's user config (where `claude mcp add --scope user` writes)."""
    return Path(env[CONFIG_DIR_ENV]) / ".claude.json" if env.get(CONFIG_DIR_ENV) else home / ".claude.json"


def _read_json(path: Path) -> tuple[Any, str | None]:
    """The parsed file (None when absent) and, when it cannot be used, why."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{path} cannot be read ({e.__class__.__name__}: {e})"
    except ValueError as e:
        return None, f"{path} is not valid JSON ({e})"


def find_settings(url: str | None, key: str | None, env: Mapping[str, str], home: Path) -> Settings:
    """Where the URL and the key come from: option, then environment, then Claude Code's settings."""
    path = claude_dir(env, home) / "settings.json"
    data, problem = _read_json(path)
    file_env = data.get("env") if isinstance(data, dict) else None
    if not isinstance(file_env, dict):
        file_env = {}

    def pick(option: str | None, flag: str, name: str) -> tuple[str | None, str]:
        if option:
            return option, flag
        if env.get(name):
            return env[name], f"environment ({name})"
        value = file_env.get(name)
        if isinstance(value, str) and value:
            return value, f"{_tilde(path, home)} (env.{name})"
        return None, ""

    found_url, url_from = pick(url, "--url", URL_ENV)
    found_key, key_from = pick(key, "--key", KEY_ENV)
    return Settings(found_url.rstrip("/") if found_url else None, url_from, found_key, key_from,
                    (problem,) if problem else ())


def _tilde(path: Path, home: Path) -> str:
    try:
        return "~/" + str(path.relative_to(home))
    except ValueError:
        return str(path)


def mask(key: str | None) -> str:
    """Enough of the key to tell two apart, never enough to use it."""
    if not key:
        return "(none)"
    if len(key) < 16:
        return "*" * 8
    return f"{key[:4]}...{key[-2:]} ({len(key)} characters)"


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _router_message(response: httpx.Response) -> str:
    """The error message of a router answer (Anthropic, OpenAI or JSON-RPC shape), else its status."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return f"HTTP {response.status_code}: {message}" if message else f"HTTP {response.status_code}"


def _connection_fix(url: str, e: httpx.HTTPError) -> tuple[str, str]:
    text = str(e) or e.__class__.__name__
    if isinstance(e, httpx.TimeoutException):
        return (f"no answer from {url} within the timeout ({e.__class__.__name__})", _NO_ANSWER)
    lowered = text.lower()
    if "name or service not known" in lowered or "nodename nor servname" in lowered or \
            "name resolution" in lowered or "getaddrinfo" in lowered:
        return (f"the host name in {url} does not resolve ({text})", _NO_NAME)
    return (f"cannot connect to {url} ({text})", _NO_CONNECTION)


def _rpc_result(response: httpx.Response) -> dict[str, Any]:
    """The result of a JSON-RPC answer sent as JSON or as an SSE stream; ValueError when there is none."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        if not data:
            raise ValueError("empty event stream")
        message = json.loads(data[-1])
    else:
        message = response.json()
    if not isinstance(message, dict):
        raise TypeError("not a JSON-RPC message")
    if "error" in message:
        raise ValueError(f"JSON-RPC error: {message['error'].get('message', message['error'])}")
    result = message.get("result")
    if not isinstance(result, dict):
        raise TypeError("no result in the answer")
    return result


class Doctor:
    """Runs the checks in order; each one may leave what the next one needs (the client's targets)."""

    def __init__(self, settings: Settings, http: httpx.Client, env: Mapping[str, str], home: Path,
                 answer_timeout_s: float = 120.0):
        self.settings = settings
        self.http = http
        self.env = env
        self.home = home
        self.answer_timeout = answer_timeout_s  # a local model may have to load first
        self.whoami: dict[str, Any] | None = None

    def run(self) -> Iterator[Check]:
        steps: list[tuple[str, Callable[[], Check]]] = [
            ("settings", self.check_settings), ("reachable", self.check_reachable), ("key", self.check_key),
            ("targets", self.check_targets), ("mcp", self.check_mcp), ("round trip", self.check_round_trip)]
        failed: str | None = None
        for name, step in steps:
            if failed is not None:
                yield Check("skip", name, f"needs the {failed} check to pass first")
                continue
            check = step()
            yield check
            if check.status == "FAIL" and name in ("settings", "reachable", "key"):
                failed = name
        if failed == "settings":
            yield Check("skip", "claude mcp", "needs the settings check to pass first")
        else:
            yield self.check_registration()

    def check_settings(self) -> Check:
        s = self.settings
        notes = "; ".join(s.problems)
        if not s.url:
            fix = (f"set {URL_ENV} to the router's address (the team deploy writes it into "
                   f"~/.claude/settings.json, see {TEAM_DOC}), or pass --url http://AIBOX:8088")
            return Check("FAIL", "settings", "no router URL found" + (f" ({notes})" if notes else ""), fix)
        if not s.url.startswith(("http://", "https://")):
            return Check("FAIL", "settings", f"router URL {s.url!r} (from {s.url_from}) is not an "
                         "http(s) URL", f"set {URL_ENV} to http://AIBOX:8088 (scheme, host, port)")
        key = f"key {mask(s.key)} from {s.key_from}" if s.key else f"no key ({KEY_ENV} not set)"
        detail = f"router {s.url} from {s.url_from}; {key}" + (f"; note: {notes}" if notes else "")
        return Check("ok", "settings", detail)

    def check_reachable(self) -> Check:
        url = self.settings.url
        started = time.perf_counter()
        try:
            answer = self.http.get(f"{url}/health")
        except httpx.HTTPError as e:
            detail, fix = _connection_fix(str(url), e)
            return Check("FAIL", "reachable", detail, fix)
        took = (time.perf_counter() - started) * 1000
        if answer.status_code != 200:
            return Check("FAIL", "reachable", f"{url}/health answers {_router_message(answer)}",
                         "the URL may point at something else than the aibox router (or a proxy is in "
                         "the way): check the host and port")
        return Check("ok", "reachable", f"{url} answers ({took:.0f} ms)")

    def check_key(self) -> Check:
        url, key = self.settings.url, self.settings.key
        try:
            answer = self.http.get(f"{url}{WHOAMI_PATH}", headers=_auth(key))
        except httpx.HTTPError as e:
            detail, fix = _connection_fix(str(url), e)
            return Check("FAIL", "key", detail, fix)
        if answer.status_code == 401:
            if not key:
                return Check("FAIL", "key", f"the router needs a client key and none is set "
                             f"({_router_message(answer)})", f"set {KEY_ENV} to your client key; {_ONBOARD}")
            return Check("FAIL", "key", f"the router refused the key {mask(key)} ({_router_message(answer)})",
                         f"the key is not, or no longer, one of the router's client keys: {_ONBOARD}")
        if answer.status_code == 404:
            return Check("FAIL", "key", f"{url}{WHOAMI_PATH} is not served ({_router_message(answer)})",
                         _UPGRADE)
        if answer.status_code != 200:
            return Check("FAIL", "key", f"{url}{WHOAMI_PATH} answers {_router_message(answer)}", _SEE_LOG)
        try:
            self.whoami = answer.json()
            client = self.whoami["client"]
        except (ValueError, KeyError, TypeError):
            return Check("FAIL", "key", f"{url}{WHOAMI_PATH} did not answer as an aibox router does",
                         "check that the URL points at the aibox router")
        if not key:
            return Check("ok", "key", f"the router needs no key (it has no clients); you are {client!r}")
        return Check("ok", "key", f"accepted: you are client {client!r}")

    def check_targets(self) -> Check:
        who = self.whoami or {}
        targets = who.get("targets") or []
        if not targets:
            return Check("FAIL", "targets", "this key may use no target",
                         "ask the aibox admin to give your client targets (clients[].targets)")
        shown = ", ".join(f"{t['name']} ({'cloud' if t['cloud'] else 'local'}, {t['model']})"
                          for t in targets)
        detail = f"{shown}; default {who.get('default_target') or '(none of yours)'}"
        if not any(not t["cloud"] for t in targets):
            return Check("warn", "targets", detail + "; no local target, so ask_local will refuse")
        return Check("ok", "targets", detail)

    def check_mcp(self) -> Check:
        url = f"{self.settings.url}{(self.whoami or {}).get('mcp_path') or MCP_PATH}"
        headers = {"accept": "application/json, text/event-stream", **_auth(self.settings.key)}
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": MCP_VERSION, "capabilities": {},
            "clientInfo": {"name": "aibox-router-doctor", "version": "1"}}}
        try:
            opened = self.http.post(url, json=initialize, headers=headers)
            if opened.status_code == 404:
                return Check("FAIL", "mcp", f"{url} is not served", _UPGRADE)
            if opened.status_code != 200:
                return Check("FAIL", "mcp", f"{url} refused the MCP handshake ({_router_message(opened)})",
                             _SEE_LOG)
            _rpc_result(opened)
            session = {"mcp-protocol-version": MCP_VERSION}
            if opened.headers.get("mcp-session-id"):
                session["mcp-session-id"] = opened.headers["mcp-session-id"]
            self.http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                           headers={**headers, **session})
            listed = self.http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                                    headers={**headers, **session})
            tools = [t["name"] for t in _rpc_result(listed).get("tools", [])]
        except httpx.HTTPError as e:
            detail, fix = _connection_fix(url, e)
            return Check("FAIL", "mcp", detail, fix)
        except (ValueError, KeyError, TypeError) as e:
            return Check("FAIL", "mcp", f"{url} did not answer as an MCP server ({e})", _UPGRADE)
        if "ask_local" not in tools:
            return Check("FAIL", "mcp", f"{url} lists no ask_local tool (tools: "
                         f"{', '.join(tools) or 'none'})", _UPGRADE)
        return Check("ok", "mcp", f"{url} lists {', '.join(tools)}")

    def check_round_trip(self) -> Check:
        who = self.whoami or {}
        targets = who.get("targets") or []
        local = [t for t in targets if not t["cloud"]]
        chosen = (local or targets)[0]
        headers = {"anthropic-version": "2023-06-01", **_auth(self.settings.key)}
        if who.get("override_header"):
            headers[who["override_header"]] = chosen["name"]
        body = {"model": chosen["name"], "max_tokens": 16,
                "messages": [{"role": "user", "content": "Reply with the single word: ok"}]}
        started = time.perf_counter()
        try:
            answer = self.http.post(f"{self.settings.url}/v1/messages", json=body, headers=headers,
                                    timeout=self.answer_timeout)
        except httpx.TimeoutException:
            return Check("FAIL", "round trip", f"no answer from target {chosen['name']} within "
                         f"{self.answer_timeout:g} s", "the model may still be loading (the first request "
                         "after a pause is slow): retry; else run `aibox-router status` on the aibox")
        except httpx.HTTPError as e:
            detail, fix = _connection_fix(str(self.settings.url), e)
            return Check("FAIL", "round trip", detail, fix)
        took = time.perf_counter() - started
        if answer.status_code != 200:
            return Check("FAIL", "round trip", f"target {chosen['name']} answered {_router_message(answer)}",
                         "the router could not get an answer from its model: run `aibox-router status` on "
                         "the aibox (is the model server up, is the budget spent?)")
        try:
            text = "".join(b.get("text", "") for b in answer.json().get("content", []) if isinstance(b, dict))
        except (ValueError, AttributeError):
            return Check("FAIL", "round trip", "the answer is not an Anthropic Messages response",
                         "check that the URL points at the aibox router")
        served = answer.headers.get("x-aibox-target", chosen["name"])
        model = answer.headers.get("x-aibox-model", chosen["model"])
        cost = "" if not chosen["cloud"] else " (a cloud target: this cost a fraction of a cent)"
        return Check("ok", "round trip", f"{text.strip()[:40]!r} from target {served} (model {model}) "
                                         f"in {took:.1f} s{cost}")

    def check_registration(self) -> Check:
        """Warn-only: Claude Code's user config has an MCP entry for this router's /mcp, with this key."""
        path = claude_json(self.env, self.home)
        data, problem = _read_json(path)
        where = _tilde(path, self.home)
        if problem:
            return Check("warn", "claude mcp", problem, "Claude Code cannot read it either; fix or remove it")
        if data is None:
            return Check("skip", "claude mcp", f"{where} not found (Claude Code not set up for this user)")
        url = f"{self.settings.url}{MCP_PATH}"
        register = (f"claude mcp add --scope user --transport http aibox {url} "
                    f"--header \"Authorization: Bearer ${KEY_ENV}\" (or re-run the team deploy)")
        found = _registered(data.get("mcpServers") if isinstance(data, dict) else None, url)
        if found is None:
            projects = data.get("projects") if isinstance(data, dict) else None
            local = [folder for folder, project in (projects or {}).items() if isinstance(project, dict)
                     and _registered(project.get("mcpServers"), url) is not None]
            if local:  # `claude mcp add` without --scope: only Claude Code sessions in that folder see it
                return Check("warn", "claude mcp", f"{where} registers {url} only for {', '.join(local)}",
                             register)
            return Check("warn", "claude mcp", f"{where} has no MCP server at {url}", register)
        name, headers = found
        key = self.settings.key
        if key and headers.get("authorization") != f"Bearer {key}" and headers.get("x-api-key") != key:
            return Check("warn", "claude mcp", f"{where} registers {name!r} at {url} with another key "
                         f"than {mask(key)}", register)
        return Check("ok", "claude mcp", f"{where} registers {name!r} at {url}")


def _registered(servers: Any, url: str) -> tuple[str, dict[str, str]] | None:
    """The name and (lower-cased) headers of the first MCP server entry at *url*."""
    if not isinstance(servers, dict):
        return None
    for name, entry in servers.items():
        if isinstance(entry, dict) and str(entry.get("url", "")).rstrip("/") == url:
            headers = entry.get("headers")
            if not isinstance(headers, dict):
                headers = {}
            return str(name), {str(k).lower(): str(v) for k, v in headers.items()}
    return None


def run_doctor(url: str | None, key: str | None, timeout_s: float, answer_timeout_s: float,
               env: Mapping[str, str] | None = None, home: Path | None = None,
               transport: httpx.BaseTransport | None = None) -> tuple[list[Check], int]:
    """All checks and the exit status: 1 when any failed, else 0."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    settings = find_settings(url, key, env, home)
    with httpx.Client(timeout=timeout_s, transport=transport) as http:
        checks = list(Doctor(settings, http, env, home, answer_timeout_s).run())
    return checks, int(any(c.status == "FAIL" for c in checks))
