"""What the deploy writes into each developer tool's config, as pure functions of the file's text.

Each ``*_onboard`` function takes the file as it is on the machine (``None``: missing) and returns
it with aibox's part merged in; each ``*_offboard`` returns it with exactly that part taken out, or
``None`` when nothing else is left (the deploy then deletes the file). The user's other settings
are kept as they are, and a second onboard of its own output returns the same text (idempotence).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

#: The MCP server's name in Claude Code (`claude mcp list`), and the prefix of Continue's model names.
SERVER_NAME = "aibox"
CLAUDE_MD_BEGIN = ("<!-- BEGIN aibox: written by the aibox team deploy (deploy/developer.py);"
                   " edits here are replaced -->")
CLAUDE_MD_END = "<!-- END aibox -->"
#: Environment variables the deploy owns in ~/.claude/settings.json (removed again on offboarding).
CLAUDE_ENV_KEYS = ("ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC")
CONTINUE_MODEL_PREFIX = "aibox "


class UserFileError(ValueError):
    """A file on the developer's machine cannot be merged into; the message names it and the fix."""


@dataclass(frozen=True)
class Endpoint:
    """One developer's view of the router."""

    router_url: str           # http://host:port, no trailing slash
    key: str
    override_header: str      # the router's header that forces a target
    targets: list[tuple[str, bool, list[str]]]  # (target name, is cloud, Continue roles) the key may use
    disable_nonessential_traffic: bool = True

    @property
    def mcp_url(self) -> str:
        return f"{self.router_url}/mcp"


def _json_text(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _json_object(text: str | None, what: str) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserFileError(f"{what} is not valid JSON ({err}); fix or move it, "
                         "then run the deploy again") from None
    if not isinstance(data, dict):
        raise UserFileError(f"{what} must hold a JSON object, found {type(data).__name__}")
    return data


# -- ~/.claude/settings.json --------------------------------------------------------------------------

def claude_env(ep: Endpoint) -> dict[str, str]:
    env = {"ANTHROPIC_BASE_URL": ep.router_url, "ANTHROPIC_AUTH_TOKEN": ep.key}
    if ep.disable_nonessential_traffic:
        env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
    return env


def claude_settings_onboard(text: str | None, ep: Endpoint) -> str:
    data = _json_object(text, "~/.claude/settings.json")
    env = {k: v for k, v in (data.get("env") or {}).items() if k not in CLAUDE_ENV_KEYS}
    data["env"] = {**env, **claude_env(ep)}
    return _json_text(data)


def claude_settings_offboard(text: str | None) -> str | None:
    data = _json_object(text, "~/.claude/settings.json")
    env = {k: v for k, v in (data.get("env") or {}).items() if k not in CLAUDE_ENV_KEYS}
    if env:
        data["env"] = env
    else:
        data.pop("env", None)
    return _json_text(data) if data else None


# -- ~/.claude.json: the MCP server, as `claude mcp add --transport http --scope user` writes it -------

def mcp_server_entry(ep: Endpoint) -> dict[str, Any]:
    return {"type": "http", "url": ep.mcp_url, "headers": {"Authorization": f"Bearer {ep.key}"}}


def claude_json_onboard(text: str | None, ep: Endpoint) -> str:
    data = _json_object(text, "~/.claude.json")
    data["mcpServers"] = {**(data.get("mcpServers") or {}), SERVER_NAME: mcp_server_entry(ep)}
    return _json_text(data)


def claude_json_offboard(text: str | None) -> str | None:
    data = _json_object(text, "~/.claude.json")
    servers = {k: v for k, v in (data.get("mcpServers") or {}).items() if k != SERVER_NAME}
    if servers:
        data["mcpServers"] = servers
    else:
        data.pop("mcpServers", None)
    return _json_text(data) if data else None


# -- ~/.claude/CLAUDE.md --------------------------------------------------------------------------------

def claude_md_section(ep: Endpoint) -> str:
    local = [name for name, cloud, _ in ep.targets if not cloud]
    cloud = [name for name, cloud, _ in ep.targets if cloud]
    lines = [
        CLAUDE_MD_BEGIN,
        "## aibox: where your requests go",
        "",
        f"Claude Code talks to the team's aibox router at {ep.router_url}, not to Anthropic directly.",
        "The router sends each request to a local model on the aibox (free, stays on the LAN) or to",
        "Claude (paid, within your daily budget), and records every call under your name.",
        "",
        f"- Local models you may use: {', '.join(local) or 'none'}.",
        f"- Claude targets you may use: {', '.join(cloud) or 'none (your key is kept off the cloud)'}.",
        "- Routine work (edits, questions about the code, docs) is routed to a local model; hard",
        "  problems and long contexts may go to Claude.",
        "- The MCP server `aibox` offers the local models as tools (e.g. `ask_local`).",
    ]
    if cloud:
        lines += [
            "",
            "To ask for Claude explicitly for one session, start Claude Code with the router's",
            "override header:",
            "",
            f"    ANTHROPIC_CUSTOM_HEADERS='{ep.override_header}: {cloud[0]}' claude",
            "",
            f"(any target above works in place of `{cloud[0]}`; targets outside your list are refused).",
        ]
    lines.append(CLAUDE_MD_END)
    return "\n".join(lines) + "\n"


def _without_section(text: str) -> str:
    start = text.find(CLAUDE_MD_BEGIN)
    if start < 0:
        return text
    end = text.find(CLAUDE_MD_END, start)
    end = len(text) if end < 0 else end + len(CLAUDE_MD_END)
    before, after = text[:start].rstrip("\n"), text[end:].lstrip("\n")
    return "\n\n".join(part for part in (before, after) if part)


def claude_md_onboard(text: str | None, ep: Endpoint) -> str:
    rest = _without_section(text or "").rstrip("\n")
    return (rest + "\n\n" if rest else "") + claude_md_section(ep)


def claude_md_offboard(text: str | None) -> str | None:
    rest = _without_section(text or "").strip("\n")
    return rest + "\n" if rest else None


# -- ~/.continue/config.yaml ------------------------------------------------------------------------------

def continue_models(ep: Endpoint) -> list[dict[str, Any]]:
    return [{"name": f"{CONTINUE_MODEL_PREFIX}{name}", "provider": "openai", "model": name,
             "apiBase": f"{ep.router_url}/v1", "apiKey": ep.key, "roles": roles}
            for name, _, roles in ep.targets]


def _ours(model: Any) -> bool:
    return isinstance(model, dict) and str(model.get("name", "")).startswith(CONTINUE_MODEL_PREFIX)


def _continue_doc(text: str | None) -> dict[str, Any]:
    data = yaml.safe_load(text) if text else None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserFileError("~/.continue/config.yaml must hold a mapping (Continue's config.yaml format)")
    return data


def continue_onboard(text: str | None, ep: Endpoint) -> str:
    data = _continue_doc(text) or {"name": "aibox", "version": "1.0.0", "schema": "v1"}
    others = [m for m in data.get("models") or [] if not _ours(m)]
    data["models"] = continue_models(ep) + others
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def continue_offboard(text: str | None) -> str | None:
    data = _continue_doc(text)
    others = [m for m in data.get("models") or [] if not _ours(m)]
    if others:
        data["models"] = others
    else:
        data.pop("models", None)
    if not data or data == {"name": "aibox", "version": "1.0.0", "schema": "v1"}:
        return None  # only the header the deploy wrote is left
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# -- ~/.config/aibox/openai.env -----------------------------------------------------------------------------

def openai_env(ep: Endpoint) -> str:
    return ("# Written by the aibox team deploy (deploy/developer.py). For OpenAI-compatible tools:\n"
            "#   set -a; . ~/.config/aibox/openai.env; set +a\n"
            f"OPENAI_BASE_URL={ep.router_url}/v1\n"
            f"OPENAI_API_KEY={ep.key}\n")
