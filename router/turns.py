"""One routing decision per user turn.

Claude Code sends many requests for one prompt: the tool loop (read a file, run a command, read
the output, ...) and each carries the same newest user words. Deciding each request afresh would
let a turn switch between a local model and Claude halfway through an agent loop, as the context
grows or a rule's daily limit runs out, which breaks the conversation (thinking blocks and tool
ids from one model handed to another) and wastes the work done so far. So the first request of a
turn is classified and decided; the rest of the turn reuses that decision. The only switch left
is a budget downgrade, made (and marked ``downgraded``) by the budget gate.

A turn is keyed on the client, the requested model (Claude Code's background haiku calls carry
the same words but are a different job) and a digest of the user's words.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .classifier import RouteMatch
from .rules import RouteDecision

TurnKey = tuple[str, str, bytes]


@dataclass
class TurnDecision:
    match: RouteMatch
    decision: RouteDecision
    decided_at: float
    uses: int = 1


def turn_key(client: str, model: str, text: str) -> TurnKey:
    return (client, model, hashlib.blake2b(text.encode(), digest_size=16).digest())


class TurnCache:
    """Bounded, least-recently-used map of turn -> decision, forgetting entries after *ttl_s*."""

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.size = size
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[TurnKey, TurnDecision] = OrderedDict()

    def get(self, key: TurnKey) -> TurnDecision | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() - entry.decided_at > self.ttl_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        entry.uses += 1
        return entry

    def put(self, key: TurnKey, match: RouteMatch, decision: RouteDecision) -> None:
        if self.size <= 0:
            return
        self._entries[key] = TurnDecision(match, decision, self._clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
