"""Sentence embeddings from a model the box itself serves, and their on-disk cache.

Two wire shapes, chosen by the type of the backend that ``routing.embeddings.backend`` names:

* ``ollama``: ``POST {base_url}/api/embed`` with ``{"model", "input": [texts]}``, answered by
  ``{"embeddings": [[...], ...]}`` (Ollama returns them L2-normalised).
* ``openai``: ``POST {base_url}/embeddings`` (the base URL carries ``/v1``, as for chat) with the
  same request, answered by ``{"data": [{"index", "embedding"}, ...]}``.

Route examples are embedded once per config load; the vectors are kept in a small SQLite file
under ``state_dir`` keyed by model and text, so a restart or a reload that keeps the examples
embeds nothing again.

Vectors are plain lists of floats, not numpy arrays: a turn is compared with a handful of route
centroids (about 0.4 ms in Python), and importing numpy would add 13 MB to the daemon's memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import operator
import os
import sqlite3
import threading
from array import array
from pathlib import Path

import aiohttp
import msgspec

from .config import BackendConfig

log = logging.getLogger("aibox_router.embeddings")

CACHE_FILENAME = "route-embeddings.sqlite3"


Vector = list[float]


def dot(a: Vector, b: Vector) -> float:
    return float(sum(map(operator.mul, a, b)))


def normalised(vector: Vector) -> Vector:
    norm = math.sqrt(dot(vector, vector)) or 1.0
    return [x / norm for x in vector]


class EmbeddingError(Exception):
    """The embedding backend did not give usable vectors (down, slow, wrong model, bad answer)."""


class EmbeddingClient:
    """Asks one backend for embeddings; every call is bounded by *timeout_s*."""

    def __init__(self, backend: BackendConfig, model: str, timeout_s: float):
        if backend.type not in ("ollama", "openai"):
            raise ValueError(f"backend type {backend.type!r} serves no embeddings")
        self.kind = backend.type
        self.model = model
        self.timeout_s = timeout_s
        base = backend.base_url.rstrip("/")
        self.url = base + ("/api/embed" if self.kind == "ollama" else "/embeddings")
        key = os.environ.get(backend.api_key_env) if backend.api_key_env else None
        self._headers = {"content-type": "application/json"}
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # trust_env=False: a proxy from the environment must not capture a loopback backend.
            self._session = aiohttp.ClientSession(trust_env=False)
        return self._session

    async def embed(self, texts: list[str], timeout_s: float | None = None) -> list[Vector]:
        """One L2-normalised vector per text."""
        if not texts:
            return []
        body = msgspec.json.encode({"model": self.model, "input": texts})
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit):
                async with self._get_session().post(self.url, data=body, headers=self._headers) as resp:
                    raw = await resp.read()
                    if resp.status != 200:
                        raise EmbeddingError(f"{self.url} answered HTTP {resp.status}: "
                                             f"{raw[:200].decode('utf-8', 'replace')}")
        except TimeoutError:
            raise EmbeddingError(f"{self.url} gave no answer within {limit * 1000:.0f} ms") from None
        except aiohttp.ClientError as e:
            raise EmbeddingError(f"{self.url} unreachable: {type(e).__name__}: {e}") from None
        return [normalised(v) for v in self._vectors(raw, len(texts))]

    def _vectors(self, raw: bytes, count: int) -> list[Vector]:
        try:
            data = msgspec.json.decode(raw)
            if self.kind == "ollama":
                rows = data["embeddings"]
            else:
                rows = [item["embedding"] for item in sorted(data["data"], key=lambda d: d["index"])]
            vectors = [[float(x) for x in row] for row in rows]
        except (msgspec.DecodeError, KeyError, TypeError, ValueError) as e:
            raise EmbeddingError(f"{self.url} answered something that is not an embedding list: {e}") from None
        if len(vectors) != count or not all(vectors) or len({len(v) for v in vectors}) != 1:
            raise EmbeddingError(f"{self.url} returned {len(vectors)} vectors of sizes "
                                 f"{sorted({len(v) for v in vectors})} for {count} texts")
        return vectors

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def cache_key(model: str, text: str) -> str:
    return hashlib.sha256(f"{model}\0{text}".encode()).hexdigest()


class EmbeddingCache:
    """Vectors by (model, text) in one SQLite file; a damaged or unwritable file only costs re-embedding."""

    def __init__(self, path: str | Path, *, read_only: bool = False):
        """*read_only*: use the file only if it exists, never write it (the dry-run commands)."""
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        if read_only:
            try:
                self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
                self._conn.execute("SELECT 1 FROM embeddings LIMIT 1")
            except sqlite3.Error:
                self._conn = None
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False)
            conn.execute("CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                         "dim INTEGER NOT NULL, vector BLOB NOT NULL)")
            conn.commit()
            self._conn = conn
        except (OSError, sqlite3.Error) as e:
            log.warning("route embedding cache %s unusable (%s); examples are embedded on every load", self.path, e)

    @classmethod
    def in_state_dir(cls, state_dir: str, *, read_only: bool = False) -> EmbeddingCache:
        return cls(Path(state_dir) / CACHE_FILENAME, read_only=read_only)

    def get_many(self, model: str, texts: list[str]) -> dict[str, Vector]:
        """The cached vectors among *texts*, by text."""
        if self._conn is None or not texts:
            return {}
        keys = {cache_key(model, t): t for t in texts}
        found: dict[str, Vector] = {}
        with self._lock:
            try:
                items = list(keys)
                for start in range(0, len(items), 500):
                    chunk = items[start:start + 500]
                    rows = self._conn.execute(
                        f"SELECT key, dim, vector FROM embeddings WHERE key IN ({','.join('?' * len(chunk))})",
                        chunk).fetchall()
                    for key, dim, blob in rows:
                        vector = array("f")
                        vector.frombytes(blob)
                        if len(vector) == dim:
                            found[keys[key]] = vector.tolist()
            except sqlite3.Error as e:
                log.warning("reading the route embedding cache %s failed: %s", self.path, e)
                return {}
        return found

    def put_many(self, model: str, vectors: dict[str, Vector]) -> None:
        if self._conn is None or self.read_only or not vectors:
            return
        rows = [(cache_key(model, text), model, len(v), array("f", v).tobytes()) for text, v in vectors.items()]
        with self._lock:
            try:
                self._conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)
                self._conn.commit()
            except sqlite3.Error as e:
                log.warning("writing the route embedding cache %s failed: %s", self.path, e)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
