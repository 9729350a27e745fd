"""Valid requests of both protocols that use every field the router reads, and which JSON kinds
each field accepts: the ground truth for the hostile-input property tests and the fuzz benchmark."""

from __future__ import annotations

import json
from typing import Any

ANTHROPIC_BODY = {
    "model": "claude-sonnet-4-5", "max_tokens": 16, "stream": False,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "Look"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hm", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a.py"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False,
             "content": [{"type": "text", "text": "print(1)"}]}]},
    ],
    "tools": [{"name": "read", "description": "Read a file",
               "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": False},
    "metadata": {"user_id": "u1"}, "temperature": 0.5, "top_p": 0.9, "top_k": 5,
    "stop_sequences": ["END"], "thinking": {"type": "enabled", "budget_tokens": 1024},
}

# path -> JSON kinds it accepts ("null" where leaving it out is allowed too)
ANTHROPIC_FIELDS: dict[tuple, set[str]] = {
    ("model",): {"string"},
    ("max_tokens",): {"integer"},
    ("stream",): {"boolean", "null"},
    ("system",): {"string", "array", "null"},
    ("system", 0): {"object"},
    ("system", 0, "text"): {"string"},
    ("system", 0, "cache_control"): {"object", "null"},
    ("messages",): {"array"},
    ("messages", 0): {"object"},
    ("messages", 0, "role"): set(),  # only "user", "assistant", "system"
    ("messages", 0, "content"): {"string", "array"},
    ("messages", 0, "content", 0): {"object"},
    ("messages", 0, "content", 0, "type"): {"string"},
    ("messages", 0, "content", 0, "text"): {"string"},
    ("messages", 0, "content", 1, "source"): {"object"},
    ("messages", 0, "content", 1, "source", "media_type"): {"string"},
    ("messages", 0, "content", 1, "source", "data"): {"string"},
    ("messages", 1, "content", 0, "thinking"): {"string"},
    ("messages", 1, "content", 0, "signature"): {"string"},
    ("messages", 1, "content", 1, "id"): {"string"},
    ("messages", 1, "content", 1, "name"): {"string"},
    ("messages", 1, "content", 1, "input"): {"object"},
    ("messages", 2, "content", 0, "tool_use_id"): {"string"},
    ("messages", 2, "content", 0, "is_error"): {"boolean", "null"},
    ("messages", 2, "content", 0, "content"): {"string", "array", "null"},
    ("messages", 2, "content", 0, "content", 0): {"object"},
    ("messages", 2, "content", 0, "content", 0, "text"): {"string"},
    ("tools",): {"array", "null"},
    ("tools", 0): {"object"},
    ("tools", 0, "name"): {"string"},
    ("tools", 0, "description"): {"string"},
    ("tools", 0, "input_schema"): {"object"},
    ("tool_choice",): {"object", "null"},
    ("tool_choice", "type"): set(),  # only auto, any, tool, none
    ("tool_choice", "disable_parallel_tool_use"): {"boolean", "null"},
    ("metadata",): {"object", "null"},
    ("metadata", "user_id"): {"string", "null"},
    ("temperature",): {"integer", "number", "null"},
    ("top_p",): {"integer", "number", "null"},
    ("top_k",): {"integer", "null"},
    ("stop_sequences",): {"array", "null"},
    ("stop_sequences", 0): {"string"},
    ("thinking",): {"object", "null"},
    ("thinking", "type"): {"string"},
    ("thinking", "budget_tokens"): {"integer"},
}

OPENAI_BODY = {
    "model": "gpt-4o", "max_tokens": 16, "max_completion_tokens": 16, "stream": False,
    "stream_options": {"include_usage": True}, "n": 1, "user": "u1", "temperature": 0.5, "top_p": 0.9,
    "stop": ["END"], "parallel_tool_calls": True,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "name": "dev", "content": [
            {"type": "text", "text": "Look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR", "detail": "low"}}]},
        {"role": "assistant", "content": "ok", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "read", "arguments": "{\"path\": \"a\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "print(1)"},
    ],
    "tools": [{"type": "function", "function": {"name": "read", "description": "Read a file",
                                                "parameters": {"type": "object", "properties": {}}}}],
    "tool_choice": "auto",
}

OPENAI_FIELDS: dict[tuple, set[str]] = {
    ("model",): {"string"},
    ("max_tokens",): {"integer", "null"},
    ("max_completion_tokens",): {"integer", "null"},
    ("stream",): {"boolean", "null"},
    ("stream_options",): {"object", "null"},
    ("stream_options", "include_usage"): {"boolean", "null"},
    ("n",): {"integer", "null"},
    ("user",): {"string", "null"},
    ("temperature",): {"integer", "number", "null"},
    ("top_p",): {"integer", "number", "null"},
    ("stop",): {"string", "array", "null"},
    ("stop", 0): {"string"},
    ("parallel_tool_calls",): {"boolean", "null"},
    ("messages",): {"array"},
    ("messages", 0): {"object"},
    ("messages", 0, "role"): set(),
    ("messages", 0, "content"): {"string", "array", "null"},
    ("messages", 1, "name"): {"string", "null"},
    ("messages", 1, "content"): {"string", "array"},
    ("messages", 1, "content", 0): {"object"},
    ("messages", 1, "content", 0, "text"): {"string"},
    ("messages", 1, "content", 1, "image_url"): {"object", "string"},
    ("messages", 1, "content", 1, "image_url", "url"): {"string"},
    ("messages", 1, "content", 1, "image_url", "detail"): {"string", "null"},
    ("messages", 2, "content"): {"string", "array", "null"},
    ("messages", 2, "tool_calls"): {"array", "null"},
    ("messages", 2, "tool_calls", 0): {"object"},
    ("messages", 2, "tool_calls", 0, "id"): {"string"},
    ("messages", 2, "tool_calls", 0, "function"): {"object"},
    ("messages", 2, "tool_calls", 0, "function", "name"): {"string"},
    ("messages", 2, "tool_calls", 0, "function", "arguments"): {"string", "object", "null"},
    ("messages", 3, "tool_call_id"): {"string"},
    ("messages", 3, "content"): {"string", "array", "null"},
    ("tools",): {"array", "null"},
    ("tools", 0): {"object"},
    ("tools", 0, "function"): {"object"},
    ("tools", 0, "function", "name"): {"string"},
    ("tools", 0, "function", "description"): {"string", "null"},
    ("tools", 0, "function", "parameters"): {"object", "null"},
    ("tool_choice",): {"string", "object", "null"},
}

def replaced(body: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(body))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return copy


def field_name(path: tuple) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")


def router_config(anthropic_url: str, ollama_url: str, *, clients: list[dict[str, Any]], cloud_key_env: str,
                  server: dict[str, Any], budgets: dict[str, float] | None = None) -> dict[str, Any]:
    """The router the hostile requests are sent to (unit, live and fuzz benchmark alike): one cloud target
    ``claude`` on the fake Anthropic API, one local target ``local`` (the default) on the fake Ollama,
    ``claude-opus-*`` aliased to the cloud, no GPU. Each caller adds its own clients, limits and budget."""
    config: dict[str, Any] = {
        "server": server,
        "clients": clients,
        "backends": {"cloud": {"type": "anthropic", "base_url": anthropic_url, "api_key_env": cloud_key_env},
                     "ollama": {"type": "ollama", "base_url": ollama_url}},
        "targets": {"claude": {"backend": "cloud", "model": "claude-sonnet-4-5-20250929"},
                    "local": {"backend": "ollama", "model": "qwen2.5-coder:7b"}},
        "aliases": {"claude-opus-*": "claude"},
        "default_target": "local",
        "prices": [{"prefix": "claude-sonnet-4", "input": 3.0, "output": 15.0}],
        "gpu": {"enabled": False},
    }
    if budgets is not None:
        config["budgets"] = budgets
    return config
