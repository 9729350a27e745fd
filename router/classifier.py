"""Which route a user turn belongs to: its sentence embedding and its words against the route examples.

The text classified is the user's own words in the newest user turn (:func:`user_turn_text`):
Claude Code's ``<system-reminder>`` blocks, tool results and pasted file contents or logs say
nothing about how hard the work is, so they are dropped or cut down before embedding.

A route's score has two parts:

* semantic: the cosine similarity of the turn to the route's centroid (the mean of its examples
  and its description, which counts as ``routing.description_weight`` examples), both taken
  relative to the mean of all examples. Sentence embeddings of one model share a large common
  direction (every developer prompt looks alike to it);
  subtracting the examples' mean leaves what tells the routes apart. The centroid beat the mean
  of the k nearest examples for every k on the project's labelled set: one odd example moves a
  centroid little;
* lexical: ``routing.lexical_weight`` times the TF-IDF cosine of the turn's words with the route's
  examples (route_lexical.py), which weighs the few words that say what kind of work it is.

The route with the highest score wins; ``margin`` is its lead over the runner-up (a small margin is
a close call). The nearest single examples are reported for ``route explain``. When no embedding
backend answers within ``routing.embeddings.timeout_ms``, or the examples could not be embedded
yet, the keyword classifier of features.py picks the route through each route's
``keyword_tasks``, and the match says so (``source == "keyword"``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .config import RouterConfig
from .embeddings import EmbeddingCache, EmbeddingClient, EmbeddingError, Vector, dot, normalised
from .features import classify_task
from .route_lexical import LexicalScorer

log = logging.getLogger("aibox_router.classifier")

# Enough of a turn to say what is asked; MiniLM-class models read ~256 word pieces anyway.
MAX_TURN_CHARS = 1200
_SYSTEM_REMINDER = re.compile(r"<system-reminder>.*?(</system-reminder>|$)", re.DOTALL)
# Claude Code wraps local command output and slash-command bookkeeping in tags like these.
_CLIENT_TAGS = re.compile(r"<(local-command-stdout|local-command-stderr|bash-stdout|bash-stderr)>.*?</\1>",
                          re.DOTALL)
_FENCE = re.compile(r"```[^\n]*\n(.*?)(```|$)", re.DOTALL)
_PASTED_LINES = 4  # a fenced block longer than this is a paste: keep its first lines only
# Pasted code, logs and tracebacks without a fence: a run of at least this many such lines is a paste.
_UNFENCED_RUN = 6
_PASTE_LINE = re.compile(
    r"^\s*(\d{4}-\d\d-\d\d|\d\d:\d\d:\d\d|\[?(TRACE|DEBUG|INFO|WARN|WARNING|ERROR|FATAL)\b"
    r"|at [\w$.<>]+\(|File \"|Traceback \(|Caused by:|E {2,}|>>> |\$ |#\d+ "
    r"|(def|class|import|from \S+ import|return|fn|func|function|const|let|var|public|private"
    r"|package|#include|@\w+)\b|\w+(Error|Exception)\b:)")
# Seconds between two attempts to embed the route examples after a failure.
PREPARE_RETRY_S = 30.0
EXAMPLES_TIMEOUT_S = 60.0


def _shorten_fence(m: re.Match[str]) -> str:
    lines = m.group(1).splitlines()
    if len(lines) <= _PASTED_LINES:
        return m.group(0)
    kept = "\n".join(lines[:_PASTED_LINES])
    return f"```\n{kept}\n[... {len(lines) - _PASTED_LINES} pasted lines]\n```"


def _pasted_line(line: str) -> bool | None:
    """True for a line of code, log or trace; False for prose; None for a blank line."""
    stripped = line.strip()
    if not stripped:
        return None
    if len(line) - len(line.lstrip(" \t")) >= 2 or _PASTE_LINE.match(line):
        return True
    symbols = sum(1 for c in stripped if not c.isalnum() and not c.isspace())
    return symbols / len(stripped) > 0.2 or stripped.endswith((";", "{", "}"))


def cut_unfenced_pastes(text: str) -> str:
    """Cut a pasted file, log or traceback without a fence to its first lines, as a fenced one is.

    A prose line between two pasted lines counts as pasted ("import os" in a file), so a paste
    is found whole; a run shorter than ``_UNFENCED_RUN`` lines (a command, a one-line error) stays.
    """
    lines = text.split("\n")
    if len(lines) < _UNFENCED_RUN:
        return text
    flags = [_pasted_line(line) for line in lines]
    for i in range(1, len(flags) - 1):
        if flags[i] is False and flags[i - 1] and flags[i + 1]:
            flags[i] = True
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not flags[i]:
            out.append(lines[i])
            i += 1
            continue
        end = i
        while end < len(lines) and flags[end] is not False:
            end += 1
        while end > i and flags[end - 1] is None:  # trailing blank lines are not part of the paste
            end -= 1
        run = [line for line, flag in zip(lines[i:end], flags[i:end], strict=True) if flag]
        if len(run) >= _UNFENCED_RUN:
            out.extend(lines[i:i + _PASTED_LINES])
            out.append(f"[... {end - i - _PASTED_LINES} pasted lines]")
        else:
            out.extend(lines[i:end])
        i = end
    return "\n".join(out)


def clean_turn_text(text: str) -> str:
    """The user's words: reminders and command output dropped, pasted blocks cut, length bounded."""
    if "<" in text:
        text = _SYSTEM_REMINDER.sub(" ", text)
        text = _CLIENT_TAGS.sub(" ", text)
    if "```" in text:
        text = _FENCE.sub(_shorten_fence, text)
    if text.count("\n") >= _UNFENCED_RUN:
        text = cut_unfenced_pastes(text)
    text = text.strip()
    if len(text) > MAX_TURN_CHARS:
        # The request is usually said before or after a paste: keep both ends.
        head = MAX_TURN_CHARS * 2 // 3
        text = text[:head] + "\n[...]\n" + text[-(MAX_TURN_CHARS - head):]
    return text


def user_turn_text(request: dict[str, Any]) -> str:
    """The cleaned text of the newest user message that has words of the user's own.

    Messages holding only tool results (and the reminders Claude Code attaches to them) are the
    tool loop, not a new turn: they are skipped, so every request of one turn yields the same text.
    """
    for message in reversed(request.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            raw = content
        elif isinstance(content, list):
            raw = "\n".join(str(b.get("text") or "") for b in content
                            if isinstance(b, dict) and b.get("type") == "text")
        else:
            continue
        text = clean_turn_text(raw)
        if text:
            return text
    return ""


@dataclass
class Neighbour:
    route: str
    example: str
    score: float


@dataclass
class RouteMatch:
    """What the classifier said about one turn (features ``route``, ``route_score``, ``route_margin``)."""

    route: str = "none"
    score: float = 0.0
    margin: float = 0.0
    source: str = "none"  # "embedding", "keyword", or "none" when no routes are configured
    scores: dict[str, float] = field(default_factory=dict)
    nearest: list[Neighbour] = field(default_factory=list)
    note: str = ""  # why the keyword fallback was used, when it was
    judge: str = "not asked"
    judge_ms: float | None = None  # how long the judge took, when it was asked
    unjudged_route: str = ""  # the classifier's own route, when the judge was asked
    elapsed_ms: float = 0.0
    # The best routes' score in parts: {"semantic": ..., "lexical": ...} (weighted as added).
    parts: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"route": self.route, "score": round(self.score, 4), "margin": round(self.margin, 4),
                "source": self.source, "scores": {k: round(v, 4) for k, v in self.scores.items()},
                "nearest": [{"route": n.route, "example": n.example, "score": round(n.score, 4)}
                            for n in self.nearest],
                "note": self.note, "judge": self.judge, "elapsed_ms": round(self.elapsed_ms, 3),
                "parts": {k: {p: round(v, 4) for p, v in part.items()} for k, part in self.parts.items()}}


class RouteClassifier:
    """Built from one config; ``prepare`` embeds the examples, ``classify`` places a turn."""

    def __init__(self, config: RouterConfig, cache: EmbeddingCache | None = None,
                 cache_dir: str | None = None, cache_read_only: bool = False):
        """*cache* (or one opened in *cache_dir* when the examples are first embedded) keeps vectors."""
        self.config = config
        self.routes = [r.name for r in config.routes]
        self.examples: list[tuple[int, str]] = [(i, e) for i, r in enumerate(config.routes)
                                                for e in r.examples if e.strip()]
        emb = config.routing.embeddings
        self.client: EmbeddingClient | None = None
        if emb is not None and config.routes:
            self.client = EmbeddingClient(config.backends[emb.backend], emb.model, emb.timeout_ms / 1000)
        self.cache = cache
        self._cache_dir = cache_dir
        self._cache_read_only = cache_read_only
        self._task_route: dict[str, str] = {}
        for r in config.routes:
            for task in r.keyword_tasks:
                self._task_route.setdefault(task, r.name)
        self.matrix: list[Vector] | None = None  # one normalised vector per example
        self.centroids: list[Vector] | None = None  # one normalised vector per route, less the mean
        self.mean: Vector | None = None  # the mean of all example vectors
        self.lexical_weight = config.routing.lexical_weight
        self.description_weight = config.routing.description_weight
        self.lexical = LexicalScorer({r.name: [e for e in r.examples if e.strip()] for r in config.routes},
                                     {r.name: r.description.strip() for r in config.routes}, self.description_weight)
        self._owner = [i for i, _ in self.examples]
        # The nearest single examples cost a comparison with every example (~6 ms in Python):
        # only route explain and tests ask for them.
        self.with_nearest = False
        self._prepare_lock = asyncio.Lock()
        self._last_failure = -PREPARE_RETRY_S
        self._failure = "route examples not embedded yet"
        self._background: asyncio.Task[bool] | None = None
        self._last_warning = 0.0

    @property
    def ready(self) -> bool:
        return self.matrix is not None

    async def prepare(self) -> bool:
        """Embed the route examples (from the disk cache where it has them); False on failure."""
        if self.matrix is not None or self.client is None:
            return self.matrix is not None
        async with self._prepare_lock:
            if self.matrix is not None:
                return True
            model = self.client.model
            if self.cache is None and self._cache_dir:
                self.cache = EmbeddingCache.in_state_dir(self._cache_dir, read_only=self._cache_read_only)
            texts = [t for _, t in self.examples]
            # A route's description is written to define the class: it counts as one more example.
            descriptions = [r.description.strip() for r in self.config.routes]
            known = self.cache.get_many(model, texts + descriptions) if self.cache else {}
            missing = list(dict.fromkeys(t for t in texts + descriptions if t not in known))
            try:
                for start in range(0, len(missing), 32):
                    batch = missing[start:start + 32]
                    vectors = await self.client.embed(batch, timeout_s=EXAMPLES_TIMEOUT_S)
                    fresh = dict(zip(batch, vectors, strict=True))
                    known.update(fresh)
                    if self.cache:
                        self.cache.put_many(model, fresh)
            except EmbeddingError as e:
                self._last_failure = time.monotonic()
                self._failure = f"route examples could not be embedded: {e}"
                log.warning("%s; routing by keywords until they are", self._failure)
                return False
            dims = {len(known[t]) for t in texts + descriptions}
            if len(dims) != 1:
                self._failure = f"cached example vectors have mixed sizes {sorted(dims)}; clear the cache"
                log.error(self._failure)
                return False
            matrix = [known[t] for t in texts]
            members = matrix + [known[t] for t in descriptions]
            owners = self._owner + list(range(len(self.routes)))
            mean = [sum(column) / len(members) for column in zip(*members, strict=True)]
            # In its route's centroid a description counts as description_weight examples.
            weights = [1] * len(matrix) + [self.description_weight] * len(descriptions)
            centroids = []
            for i in range(len(self.routes)):
                own = [(v, w) for v, w, owner in zip(members, weights, owners, strict=True) if owner == i and w]
                total = sum(w for _, w in own)
                centroid = [sum(v[d] * w for v, w in own) / total for d in range(len(mean))]
                centroids.append(normalised([c - m for c, m in zip(centroid, mean, strict=True)]))
            self.mean = mean
            self.centroids = centroids
            self.matrix = matrix
            log.info("route classifier ready: %d examples, %d descriptions embedded with %s (%d from cache)",
                     len(texts), len(descriptions), model, len(texts) + len(descriptions) - len(missing))
            return True

    def prepare_soon(self) -> None:
        """Start embedding the examples in the background (no-op without a running event loop)."""
        if self.client is None or self.matrix is not None:
            return
        if self._background is not None and not self._background.done():
            return
        if time.monotonic() - self._last_failure < PREPARE_RETRY_S:
            return
        try:
            self._background = asyncio.get_running_loop().create_task(self.prepare())
        except RuntimeError:  # no running loop (a synchronous caller): the next async call retries
            pass

    async def _wait_for_examples(self) -> bool:
        """Right after a (re)load the examples may still be embedding: wait up to the turn's timeout."""
        self.prepare_soon()
        task = self._background
        if task is None or self.client is None:
            return self.matrix is not None
        try:
            return bool(await asyncio.wait_for(asyncio.shield(task), self.client.timeout_s))
        except TimeoutError:
            return False

    async def classify(self, text: str) -> RouteMatch:
        started = time.perf_counter()
        if not self.routes:
            return RouteMatch(elapsed_ms=(time.perf_counter() - started) * 1000)
        if self.client is None:
            match = self.keyword_match(text, "no embedding backend configured (routing.embeddings)")
        elif self.matrix is None and not await self._wait_for_examples():
            match = self.keyword_match(text, self._failure)
        elif not text:
            match = self.keyword_match(text, "the turn has no text of the user's own")
        else:
            try:
                vector = (await self.client.embed([text]))[0]
            except EmbeddingError as e:
                match = self.keyword_match(text, f"embedding failed: {e}")
            else:
                match = self.match_vector(vector, text)
        match.elapsed_ms = (time.perf_counter() - started) * 1000
        if match.source == "keyword" and self.client is not None:
            now = time.monotonic()
            if now - self._last_warning > 60:  # one line a minute, not one per request
                self._last_warning = now
                log.warning("routing by keywords: %s", match.note)
        return match

    def match_vector(self, vector: Vector, text: str = "") -> RouteMatch:
        """Place a turn by its embedding *vector* and, when given, its *text* (the lexical part)."""
        assert self.matrix is not None and self.centroids is not None and self.mean is not None
        if len(vector) != len(self.matrix[0]):
            return self.keyword_match("", f"the embedding model returned {len(vector)} dimensions, "
                                          f"the examples have {len(self.matrix[0])}")
        centred = normalised([x - m for x, m in zip(vector, self.mean, strict=True)])
        semantic = [dot(c, centred) for c in self.centroids]
        weight = self.lexical_weight
        lexical = [0.0] * len(semantic)
        if text and weight:
            lexical = [weight * x for x in self.lexical.scores(text)]
        scores = {name: semantic[i] + lexical[i] for i, name in enumerate(self.routes)}
        ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
        best, best_score = ranked[0]
        margin = best_score - ranked[1][1] if len(ranked) > 1 else best_score
        index = {name: i for i, name in enumerate(self.routes)}
        parts = {name: {"semantic": semantic[index[name]], "lexical": lexical[index[name]]}
                 for name, _ in ranked[:4]}
        nearest: list[Neighbour] = []
        if self.with_nearest:
            sims = sorted(((dot(v, vector), j) for j, v in enumerate(self.matrix)), reverse=True)[:5]
            nearest = [Neighbour(self.routes[self._owner[j]], self.examples[j][1], s) for s, j in sims]
        return RouteMatch(route=best, score=best_score, margin=margin, source="embedding",
                          scores=dict(ranked), nearest=nearest, parts=parts)

    def route_for_task(self, task: str) -> str:
        """The first route whose ``keyword_tasks`` list *task*, or ``none``."""
        return self._task_route.get(task, "none")

    def keyword_match(self, text: str, reason: str) -> RouteMatch:
        task = classify_task(text)
        route = self.route_for_task(task)
        return RouteMatch(route=route, source="keyword",
                          note=f"{reason}; keyword task {task!r} -> route {route!r}")

    async def aclose(self) -> None:
        if self._background is not None and not self._background.done():
            self._background.cancel()
        if self.client is not None:
            await self.client.aclose()
        if self.cache is not None:
            self.cache.close()
