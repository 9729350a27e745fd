"""How a request is fitted to one target before that target's backend sees it.

The target's ``max_output_tokens`` caps ``max_tokens`` here and nowhere else: the pipeline, the
model benchmark and the routing judge all send what ``prepare_for_target`` returns, and the wire
modules put the request's ``max_tokens`` into their protocol's field as it is.
"""

from __future__ import annotations

from typing import Any

from .config import TargetConfig
from .internal import Request


def capped_max_tokens(asked: Any, cap: int | None) -> int | None:
    """The output limit a target is sent: the client's ``max_tokens`` lowered to the target's
    ``max_output_tokens``, or that cap alone when the client set none. The one place it is capped."""
    tokens: int | None = asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else None
    if tokens is not None and cap:
        return min(tokens, cap)
    return tokens or cap or None


def prepare_for_target(request: Request, target: TargetConfig) -> Request:
    """The request as *target*'s backend gets it: its model, its output cap."""
    body = {**request, "model": target.model}
    max_tokens = capped_max_tokens(body.get("max_tokens"), target.max_output_tokens)
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body
