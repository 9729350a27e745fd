"""What the two chat-message protocols (OpenAI Chat, Ollama) share on the backend side.

Both turn the internal (Anthropic-shaped) request into a list of role-tagged chat messages, name
tools by function, and may report no token counts, in which case the router estimates them from
text. The protocol modules (openai_chat.py, ollama.py) build their own messages from these parts.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from ..internal import CallContext, Message, Request, text_of
from . import encode_json

CHARS_PER_TOKEN = 4  # rough, but the usual rule of thumb for English text and code

# What replaces an image a backend cannot take (given by URL where only inline images go).
URL_IMAGE_NOTE = "[image omitted: this backend accepts only inline images]"


def new_tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def system_texts(request: Request) -> list[str]:
    """The top-level system prompt plus any ``role: system`` messages (kept in order)."""
    texts = [text_of(request.get("system"))]
    texts += [text_of(m.get("content")) for m in request.get("messages") or [] if m.get("role") == "system"]
    return [t for t in texts if t]


def tool_names_by_id(request: Request) -> dict[str, str]:
    """tool_use id -> tool name, for APIs whose tool results name the tool rather than the call."""
    names: dict[str, str] = {}
    for message in request.get("messages") or []:
        if isinstance(message.get("content"), list):
            for block in message["content"]:
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    names[str(block.get("id"))] = str(block.get("name"))
    return names


def tool_result_text(block: dict[str, Any]) -> str:
    """A tool_result's content as text; images in it cannot go to a text-only tool message."""
    content = block.get("content")
    if isinstance(content, list):
        parts = [b.get("text", "") if b.get("type") == "text" else f"[{b.get('type')} omitted]"
                 for b in content if isinstance(b, dict)]
        text = "\n".join(parts)
    else:
        text = content if isinstance(content, str) else ""
    return f"Error: {text}" if block.get("is_error") else text


def function_tools(request: Request) -> list[dict[str, Any]]:
    """Client tools as OpenAI/Ollama function tools; server tools (no input_schema) cannot run locally."""
    return [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                              "parameters": t["input_schema"]}}
            for t in request.get("tools") or [] if isinstance(t, dict) and t.get("input_schema")]


def output_schema(request: Request) -> dict[str, Any] | None:
    """The JSON schema the answer must follow: Anthropic's structured outputs field
    ``output_format: {"type": "json_schema", "schema": ...}``, or None."""
    output_format = request.get("output_format")
    if not isinstance(output_format, dict) or output_format.get("type") != "json_schema":
        return None
    schema = output_format.get("schema")
    return schema if isinstance(schema, dict) else None


def parse_arguments(raw: Any) -> dict[str, Any]:
    """Tool-call arguments as a dict.

    Small local models sometimes emit malformed JSON. The raw text is kept under a key the tool's
    schema will not know, so the client's input validation rejects the call visibly and the model
    sees its mistake, instead of the tool running with empty input.
    """
    if isinstance(raw, dict):
        return raw
    if raw is None or raw == "":
        return {}
    try:
        parsed = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        parsed = None
    return parsed if isinstance(parsed, dict) else {"invalid_json_arguments": str(raw)}


def estimate_tokens(text_chars: int) -> int:
    return max(1, -(-text_chars // CHARS_PER_TOKEN)) if text_chars else 0


def estimate_prompt_tokens(request: Request) -> int:
    """What the prompt costs in tokens, guessed from its text when the server does not say."""
    chars = sum(len(t) for t in system_texts(request))
    for message in request.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
            continue
        for block in content or []:
            if block.get("type") == "text":
                chars += len(block.get("text", ""))
            elif block.get("type") == "tool_use":
                chars += len(encode_json(block.get("input") or {})) + len(block.get("name", ""))
            elif block.get("type") == "tool_result":
                chars += len(tool_result_text(block))
    chars += len(encode_json(request.get("tools"))) if request.get("tools") else 0
    return estimate_tokens(chars)


Blocks = list[dict[str, Any]]


def chat_messages(request: Request, assistant_message: Callable[[Blocks], dict[str, Any]],
                  user_messages: Callable[[Blocks], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The conversation as chat messages: the system texts first, then each turn; a turn made
    of content blocks is built by the wire format's own *assistant_message* / *user_messages*."""
    out: list[dict[str, Any]] = [{"role": "system", "content": t} for t in system_texts(request)]
    for message in request.get("messages") or []:
        role, content = message.get("role"), message.get("content")
        if role == "system":
            continue  # already in front, with the top-level system prompt
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif role == "assistant":
            out.append(assistant_message(content or []))
        else:
            out.extend(user_messages(content or []))
    return out


def message_skeleton(message_id: str, model: str, input_tokens: int) -> Message:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 0}}


def finish_usage(ctx: CallContext, request: Request, input_tokens: int | None, output_tokens: int | None,
                 output_chars: int) -> dict[str, int]:
    """The final usage, estimated (and flagged so) for whatever the server did not report."""
    if input_tokens is None or output_tokens is None:
        ctx.usage.estimated = True
    if input_tokens is None:
        input_tokens = estimate_prompt_tokens(request)
    if output_tokens is None:
        output_tokens = estimate_tokens(output_chars)
    return {"input_tokens": input_tokens, "output_tokens": output_tokens}

