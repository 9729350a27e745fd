"""Upper bounds on what one cloud request can be billed for, read from the request itself.

The budget holds a call's worst case while it runs (budget.py); these functions say how many
tokens and searches that worst case counts, and lower what the request may use where the
request alone leaves it unbounded, so the reservation is a bound and not a guess:

* **output**: ``max_tokens``, lowered to ``budgets.reserve_output_tokens_cap`` before the call
  goes out (the API never produces more than ``max_tokens``, thinking included);
* **prompt**: the bytes of the request as forwarded (a token stands for at least one byte of
  the text it encodes; JSON escaping only adds bytes), plus ``PROMPT_OVERHEAD_TOKENS`` for what
  the API adds (the tool-use system prompt, turn markers), plus ``IMAGE_TOKENS`` per image. A
  request whose documents or images are not in its bytes (PDFs, ``url`` or ``file`` sources) is
  counted exactly with the free ``count_tokens`` endpoint instead;
* **web searches**: each web search tool's ``max_uses``; a tool without one is sent with
  ``max_uses: DEFAULT_WEB_SEARCH_USES``. Each search's results enter the prompt; the reservation
  counts ``WEB_SEARCH_RESULT_TOKENS`` per search for them, an assumption (the API publishes no
  bound on result size), and the one part of the worst case that is an estimate.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..internal import Request

# What the API adds to the prompt: the tool-use system prompt (a few hundred tokens on current
# models), role and turn markers. Generous on purpose.
PROMPT_OVERHEAD_TOKENS = 4096
# An image costs about width x height / 750 tokens after the API scales it down (~1,600 for the
# largest on most models). A tiny PNG of large dimensions can be a few hundred bytes, so each
# image adds this much on top of its bytes.
IMAGE_TOKENS = 5000
DEFAULT_WEB_SEARCH_USES = 5
WEB_SEARCH_RESULT_TOKENS = 20_000


def _blocks(request: Request) -> list[dict[str, Any]]:
    """Every content block of the system prompt and the messages, tool results' content included."""
    found: list[dict[str, Any]] = []

    def walk(content: Any) -> None:
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict):
                    found.append(block)
                    walk(block.get("content"))

    walk(request.get("system"))
    for message in request.get("messages") or []:
        if isinstance(message, dict):
            walk(message.get("content"))
    return found


def needs_exact_count(request: Request) -> bool:
    """Whether the request's bytes cannot bound its prompt: PDFs, media by url or file reference."""
    for block in _blocks(request):
        btype = block.get("type")
        source: dict[str, Any] = block["source"] if isinstance(block.get("source"), dict) else {}
        if btype == "document" and source.get("type") != "text":
            return True
        if btype in ("image", "document") and source.get("type") in ("url", "file"):
            return True
    return False


def prompt_token_bound(request: Request, exact: int | None = None) -> int:
    """The most prompt tokens *request* can be billed for in one pass (see the module docstring)."""
    if exact is not None:
        return exact + PROMPT_OVERHEAD_TOKENS
    images = sum(1 for b in _blocks(request) if b.get("type") == "image")
    return len(msgspec.json.encode(request)) + PROMPT_OVERHEAD_TOKENS + images * IMAGE_TOKENS


def output_token_bound(request: Request, cap: int) -> int:
    """The output tokens a call may produce once ``limit_request`` lowered its max_tokens."""
    max_tokens = request.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
        return min(max_tokens, cap)
    return cap  # the API rejects a request without max_tokens; hold the cap anyway


def _is_web_search(tool: Any) -> bool:
    return isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search")


def web_search_bound(request: Request) -> int:
    """The most web searches *request* may run once ``limit_request`` gave every search tool a max_uses."""
    total = 0
    for tool in request.get("tools") or []:
        if _is_web_search(tool):
            uses = tool.get("max_uses")
            total += uses if isinstance(uses, int) and uses >= 0 else DEFAULT_WEB_SEARCH_USES
    return total


def limit_request(request: Request, cap: int) -> tuple[Request, int | None]:
    """*request* as it may go to a cloud target: max_tokens at most *cap*, every web search tool
    with a max_uses. Returns the body and the max_tokens it asked for when that was lowered."""
    body = request
    clamped_from: int | None = None
    max_tokens = request.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens > cap:
        body = {**body, "max_tokens": cap}
        clamped_from = max_tokens
    tools = request.get("tools")
    if isinstance(tools, list) and any(_is_web_search(t) and not isinstance(t.get("max_uses"), int) for t in tools):
        body = {**body, "tools": [{**t, "max_uses": DEFAULT_WEB_SEARCH_USES}
                                  if _is_web_search(t) and not isinstance(t.get("max_uses"), int) else t
                                  for t in tools]}
    return body, clamped_from
