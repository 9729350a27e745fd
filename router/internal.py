"""The one request/response shape that sits between the protocol adapters and the backends.

The internal shape *is* the Anthropic Messages API shape, held as plain dicts:

* a request is a Messages request body (``model``, ``messages``, ``system``, ``tools``, ...);
  unknown fields are kept, so the Anthropic backend forwards them untouched;
* a complete response is a Messages ``message`` object;
* a streamed response is the sequence of Messages stream events (``message_start``,
  ``content_block_start``, ``content_block_delta``, ``content_block_stop``, ``message_delta``,
  ``message_stop``), each a dict with a ``type`` key.

Why this shape: Claude Code, the most demanding client, and the paid backend both speak it, so
the common path (Anthropic in, Anthropic or local out) translates at most once, and nothing the
cloud API adds later is lost in a lossy middle format. ``wire/openai_chat.py`` translates OpenAI Chat
Completions into it and out of it, ``wire/ollama.py`` Ollama's chat API (see ``wire/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Request = dict[str, Any]
Message = dict[str, Any]
StreamEvent = dict[str, Any]

def text_of(content: Any) -> str:
    """Text of a string or a list of content blocks (non-text blocks contribute nothing)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


@dataclass
class Usage:
    """Token usage of one request, in Anthropic's terms, plus what else its bill depends on."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0  # 5-minute cache writes
    cache_creation_1h_input_tokens: int = 0  # 1-hour cache writes
    cache_read_input_tokens: int = 0
    web_search_requests: int = 0  # usage.server_tool_use.web_search_requests
    speed: str | None = None  # "fast" for fast mode (from the usage, else the request)
    inference_geo: str | None = None  # where inference ran (from the usage, else the request)
    estimated: bool = False  # True when the backend reported nothing and the router counted

    @property
    def prompt_tokens(self) -> int:
        """Every input-side token: what the long-context threshold is compared with."""
        return (self.input_tokens + self.cache_creation_input_tokens + self.cache_creation_1h_input_tokens
                + self.cache_read_input_tokens)

    def update_from(self, usage: dict[str, Any] | None) -> None:
        """Merge a usage object from a message, message_start or message_delta.

        Every count is cumulative (a later event repeats and may raise it: server tools add
        iterations), so a later value replaces an earlier one. ``message_start`` splits cache writes
        into 5-minute and 1-hour (``cache_creation``); ``message_delta`` repeats only the total
        ``cache_creation_input_tokens``. A total without a split keeps the split already known, and
        writes beyond it are added to the 1-hour bucket when the request wrote any there (the
        dearer rate: never under-billed), else to the 5-minute bucket.
        """
        if not usage:
            return
        for key in ("input_tokens", "output_tokens", "cache_read_input_tokens"):
            value = token_count(usage.get(key))
            if value is not None:
                setattr(self, key, value)
        creation = usage.get("cache_creation")
        total = token_count(usage.get("cache_creation_input_tokens"))
        if isinstance(creation, dict):
            self.cache_creation_input_tokens = token_count(creation.get("ephemeral_5m_input_tokens")) or 0
            self.cache_creation_1h_input_tokens = token_count(creation.get("ephemeral_1h_input_tokens")) or 0
        if total is not None:
            known = self.cache_creation_input_tokens + self.cache_creation_1h_input_tokens
            if total > known:
                if self.cache_creation_1h_input_tokens:
                    self.cache_creation_1h_input_tokens += total - known
                else:
                    self.cache_creation_input_tokens += total - known
            elif total < known and not isinstance(creation, dict):
                # A smaller total than the split (not seen from the real API): trust the total.
                self.cache_creation_input_tokens, self.cache_creation_1h_input_tokens = total, 0
        server_tools = usage.get("server_tool_use")
        searches = token_count(server_tools.get("web_search_requests")) if isinstance(server_tools, dict) else None
        if searches is not None:
            self.web_search_requests = searches
        for key in ("speed", "inference_geo"):
            value = usage.get(key)
            if isinstance(value, str) and value:
                setattr(self, key, value)

    def as_anthropic(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens + self.cache_creation_1h_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }


def token_count(value: Any) -> int | None:
    """An upstream's count, or None when it is not a count: a negative number (which would lower the
    recorded spend), a bool (an int subclass in Python), a float or a string are not taken."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


@dataclass
class CallContext:
    """What travels with one call to a backend besides the body."""

    # Headers forwarded to the Anthropic backend (anthropic-version, anthropic-beta); never client keys.
    forward_headers: dict[str, str] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    upstream_request_id: str | None = None


def observe_event(usage: Usage, event: StreamEvent) -> None:
    """Track usage as a stream passes by, so an aborted stream is still accounted for."""
    etype = event.get("type")
    if etype == "message_start":
        usage.update_from(event.get("message", {}).get("usage"))
    elif etype == "message_delta":
        usage.update_from(event.get("usage"))
