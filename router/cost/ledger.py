"""The request ledger: one row per served (or failed) call, plus the small persisted cost state.

Everything cost control knows survives a restart because it lives here: settled requests (the
day's spend is their sum), the emergency cutoff (engaged, day, reason, by) and which alerts were
already sent today. The daemon writes it; the operator commands read it and flip the cutoff.

Storage sits behind :class:`LedgerStore` so a PostgreSQL store can replace SQLite later (several
routers sharing one budget): implement the same methods, keep ``cost_usd`` exact (``NUMERIC``),
make ``mark_alert`` an ``INSERT ... ON CONFLICT DO NOTHING`` and ``changed`` a cheap poll (or
``LISTEN/NOTIFY``). Nothing outside this module touches SQL.

SQLite settings, and why:

* WAL journal: the CLI (reports, ``cutoff check`` from cron) reads while the daemon writes,
  without either blocking the other.
* Durability per row, as PostgreSQL's per-transaction ``synchronous_commit`` does it. A row that
  concerns money (any cloud-bound call) is written with ``synchronous=FULL``: fsynced before
  ``insert`` returns, so it survives a power cut, not only ``kill -9``. A local call's row costs
  nothing; it is committed with ``synchronous=NORMAL`` (in the WAL, safe from a crash of the
  process) and reaches the disk at the next ``flush`` (the daemon calls it within a second) or
  the next cloud row. The fsync is about a quarter of the router's CPU for a small local request
  on this class of machine; a power cut may cost the report at most a second of free calls.
* ``cost_usd`` is TEXT holding the exact Decimal; sums are done in Python in Decimal so a day of
  thousands of calls matches the provider's invoice to the cent (SQL SUM would use floats).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Protocol

from ..accounting import RequestRecord

LEDGER_FILENAME = "ledger.sqlite3"


@dataclass
class LedgerRow:
    """A request as stored: the RequestRecord flattened, plus its budget day and exact cost.

    One field per column of the ``requests`` table, which operators query with sqlite3
    (docs/cost-control.md, "The ledger"); booleans are stored as 0/1, ``cost_usd`` as exact text.
    """

    ts: float  # Unix time (seconds, UTC) the request arrived
    day: str  # budget day it counts against: local date (YYYY-MM-DD) in the budget time zone
    client: str  # authenticated client name (``mcp`` for the stdio MCP server)
    rule: str  # routing rule that chose the request's target
    target: str  # target of this attempt: each target tried for a request gets its own row
    backend: str  # that target's backend name (config ``backends``)
    model: str  # model name sent upstream
    protocol: str  # inbound API: anthropic, openai or mcp
    stream: bool  # the client asked for a stream
    cloud: bool  # a cloud (paid) backend: counts against the budgets
    input_tokens: int = 0  # uncached input tokens
    output_tokens: int = 0
    cache_write_5m_tokens: int = 0  # input tokens written to the 5-minute prompt cache
    cache_write_1h_tokens: int = 0  # input tokens written to the 1-hour prompt cache
    cache_read_tokens: int = 0  # input tokens read from the prompt cache
    usage_estimated: bool = False  # some token counts are the router's estimate (the backend reported none)
    cost_usd: Decimal = Decimal(0)  # what the call cost, USD (0 for a local target)
    latency_ms: float = 0.0  # arrival to the end of the answer, milliseconds
    ttft_ms: float | None = None  # arrival to the first output token (unstreamed: the answer), ms; NULL: none
    status: str = "ok"  # ok, error, aborted (client left or stream broke) or refused (never sent upstream)
    http_status: int = 200  # status the client got (499: the client closed the connection)
    fallback: bool = False  # this target is not the rule's first choice (a fallback in its chain)
    downgraded: bool = False  # the rule chose the cloud but the budget sent it to a local target
    task: str = ""  # classified task type (features.py: code_generation, debugging, ...)
    complexity: int = 0  # classified complexity, 0 (trivial) to 10 (hard)
    error: str = ""  # why it failed (status error/aborted/refused), at most 2000 characters
    energy_j: float | None = None  # GPU energy while it was served, joules (local targets with NVML)
    requested_model: str = ""  # model the client asked for (prices local calls in the report)
    web_search_requests: int = 0  # server-side web searches (billed per search)
    speed: str = ""  # billing speed mode: fast, or "" for standard (the usage's, else the request's)
    inference_geo: str = ""  # where inference ran (the usage's, else the request's; "" when neither says)
    skipped: str = ""  # targets passed over because the prompt did not fit their window
    route: str = ""  # route policy of the user turn (config routes), or none
    route_source: str = ""  # how the route was found: embedding, or keyword when embeddings did not answer
    id: int | None = None  # row id, assigned by the store

    @classmethod
    def from_record(cls, record: RequestRecord, *, day: str, cost_usd: Decimal) -> LedgerRow:
        u = record.usage
        return cls(
            ts=record.ts, day=day, client=record.client, rule=record.rule, target=record.target,
            backend=record.backend, model=record.model, protocol=record.protocol, stream=record.stream,
            cloud=record.cloud, input_tokens=u.input_tokens, output_tokens=u.output_tokens,
            cache_write_5m_tokens=u.cache_creation_input_tokens,
            cache_write_1h_tokens=u.cache_creation_1h_input_tokens,
            cache_read_tokens=u.cache_read_input_tokens, usage_estimated=u.estimated, cost_usd=cost_usd,
            latency_ms=record.latency_ms, ttft_ms=record.ttft_ms, status=record.status,
            http_status=record.http_status, fallback=record.fallback, downgraded=record.downgraded,
            task=record.task, complexity=record.complexity, error=record.error[:2000],
            energy_j=record.energy_j, requested_model=record.requested_model,
            web_search_requests=u.web_search_requests, speed=u.speed or "", inference_geo=u.inference_geo or "",
            skipped=record.skipped, route=record.route, route_source=record.route_source,
        )


@dataclass
class CutoffState:
    """The emergency cutoff. It only holds on ``day``: a new budget day lifts it by itself."""

    engaged: bool = False
    day: str = ""
    reason: str = ""
    by: str = ""
    ts: float = 0.0

    def active_on(self, day: str) -> bool:
        return self.engaged and self.day == day


@dataclass
class DayTotals:
    """What admission control needs about one day, read once at start-up and at each day change."""

    cloud_spend: Decimal = Decimal(0)
    client_spend: dict[str, Decimal] = field(default_factory=dict)
    # Requests each rule sent (not refused, not downgraded to a local target): rules' daily_limit.
    rule_counts: dict[str, int] = field(default_factory=dict)


class LedgerStore(Protocol):
    """Persistence for cost control. Methods are synchronous and safe to call from any thread."""

    def insert(self, row: LedgerRow, *, durable: bool = True) -> int:
        """Store *row*, committed when this returns; return its id.

        durable=True: on disk too (survives a power cut). durable=False: survives a crash of the
        process; on disk after the next ``flush`` or durable write.
        """
        ...

    def try_insert(self, row: LedgerRow) -> int | None:
        """``insert(row, durable=False)`` for a caller that must not wait (the event loop): None,
        and nothing stored, when another writer holds the ledger right now."""
        ...

    def flush(self) -> bool:
        """Put every committed row on disk; False when that could not finish now (retry later)."""
        ...

    def rows(self, first_day: str, last_day: str) -> list[LedgerRow]: ...

    def day_totals(self, day: str) -> DayTotals: ...

    def get_cutoff(self) -> CutoffState: ...

    def set_cutoff(self, state: CutoffState) -> None: ...

    def mark_alert(self, day: str, kind: str, ts: float) -> bool:
        """Record that alert *kind* went out for *day*; False when it was already recorded."""
        ...

    def alerts_sent(self, day: str) -> set[str]: ...

    def changed(self) -> bool:
        """Cheap: has another connection or process committed since the last call from this thread?"""
        ...

    def close(self) -> None: ...


_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(LedgerRow) if f.name != "id")
_INSERT_SQL = f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


def _insert_on(conn: sqlite3.Connection, row: LedgerRow) -> int:
    # In autocommit mode a lone INSERT is its own transaction: committed (and fsynced, if the
    # connection is set to) when execute returns.
    cur = conn.execute(_INSERT_SQL, [_to_sql(getattr(row, name)) for name in _COLUMNS])
    row.id = int(cur.lastrowid or 0)
    return row.id


def _to_sql(value: object) -> object:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal):
        return str(value)  # exact; see the module docstring
    return value

# Migration i takes the schema from user_version i to i + 1. Append, never edit a released step.
_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []


def _migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    _MIGRATIONS.append(fn)
    return fn


@_migration
def _v1_initial(conn: sqlite3.Connection) -> None:
    conn.execute("""
        CREATE TABLE requests (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            day TEXT NOT NULL,
            client TEXT NOT NULL,
            rule TEXT NOT NULL,
            target TEXT NOT NULL,
            backend TEXT NOT NULL,
            model TEXT NOT NULL,
            protocol TEXT NOT NULL,
            stream INTEGER NOT NULL,
            cloud INTEGER NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cache_write_5m_tokens INTEGER NOT NULL,
            cache_write_1h_tokens INTEGER NOT NULL,
            cache_read_tokens INTEGER NOT NULL,
            usage_estimated INTEGER NOT NULL,
            cost_usd TEXT NOT NULL,
            latency_ms REAL NOT NULL,
            ttft_ms REAL,
            status TEXT NOT NULL,
            http_status INTEGER NOT NULL,
            fallback INTEGER NOT NULL,
            downgraded INTEGER NOT NULL,
            task TEXT NOT NULL,
            complexity INTEGER NOT NULL,
            error TEXT NOT NULL,
            energy_j REAL
        )""")
    conn.execute("CREATE INDEX requests_day ON requests(day)")
    # One row: the cutoff is global to this router.
    conn.execute("""
        CREATE TABLE cutoff (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            engaged INTEGER NOT NULL,
            day TEXT NOT NULL,
            reason TEXT NOT NULL,
            by TEXT NOT NULL,
            ts REAL NOT NULL
        )""")
    conn.execute("INSERT INTO cutoff VALUES (1, 0, '', '', '', 0)")
    conn.execute("""
        CREATE TABLE alerts_sent (
            day TEXT NOT NULL,
            kind TEXT NOT NULL,
            ts REAL NOT NULL,
            PRIMARY KEY (day, kind)
        )""")


@_migration
def _v2_billing_modes(conn: sqlite3.Connection) -> None:
    # What a bill depends on besides tokens, and the model the client asked for (report savings).
    conn.execute("ALTER TABLE requests ADD COLUMN requested_model TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE requests ADD COLUMN web_search_requests INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE requests ADD COLUMN speed TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE requests ADD COLUMN inference_geo TEXT NOT NULL DEFAULT ''")


@_migration
def _v3_context_skips(conn: sqlite3.Connection) -> None:
    # Which targets a request passed over because its prompt did not fit their context window.
    conn.execute("ALTER TABLE requests ADD COLUMN skipped TEXT NOT NULL DEFAULT ''")


@_migration
def _v4_route(conn: sqlite3.Connection) -> None:
    # Which route policy a request's turn matched, and whether the embedding classifier or the
    # keyword fallback said so (route eval and reports compare them).
    conn.execute("ALTER TABLE requests ADD COLUMN route TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE requests ADD COLUMN route_source TEXT NOT NULL DEFAULT ''")


SCHEMA_VERSION = len(_MIGRATIONS)


class LedgerSchemaError(Exception):
    """The ledger file was written by a newer router, or is not a ledger."""


class SqliteLedger:
    """LedgerStore on one SQLite file; one connection per thread (sqlite3 objects are not shared)."""

    def __init__(self, path: str | Path, *, create: bool = True, busy_timeout_ms: int = 10_000):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise FileNotFoundError(f"no ledger at {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._migrate(self._conn())

    @classmethod
    def in_state_dir(cls, state_dir: str | Path, *, create: bool = True) -> SqliteLedger:
        return cls(Path(state_dir) / LEDGER_FILENAME, create=create)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(timeout_s=self._busy_timeout_ms / 1000)
            conn.execute("PRAGMA synchronous = FULL")
            self._local.conn = conn
            self._local.durable = True
            self._local.data_version = None
        return conn

    def _connect(self, timeout_s: float) -> sqlite3.Connection:
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) so we control when a
        # commit, and its fsync, happens.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=timeout_s)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerSchemaError(f"{self.path}: cannot switch the ledger to WAL mode (got {mode})")
        except BaseException:
            conn.close()
            raise
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            latest = len(_MIGRATIONS)
            if version > latest:
                raise LedgerSchemaError(f"{self.path}: ledger schema v{version} is newer than this router "
                                        f"supports (v{latest}); upgrade the router")
            # All steps and the version bump commit together: a crash leaves the old schema whole.
            for step in _MIGRATIONS[version:]:
                step(conn)
            if version != latest:
                conn.execute(f"PRAGMA user_version = {latest}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- requests --------------------------------------------------------------------------

    def _writer(self, durable: bool = True) -> sqlite3.Connection:
        """This thread's connection, set to fsync its next commits (durable) or not."""
        conn = self._conn()
        if self._local.durable != durable:
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._local.durable = durable
        return conn

    def insert(self, row: LedgerRow, *, durable: bool = True) -> int:
        return _insert_on(self._writer(durable), row)

    def try_insert(self, row: LedgerRow) -> int | None:
        try:
            return _insert_on(self._nowait_conn(), row)
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return None
            raise

    def _nowait_conn(self) -> sqlite3.Connection:
        """This thread's second connection: never waits for a lock, never fsyncs, never checkpoints
        (a checkpoint fsyncs; ``flush``, in the writer thread, does them)."""
        conn: sqlite3.Connection | None = getattr(self._local, "nowait", None)
        if conn is None:
            conn = self._connect(timeout_s=0)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._local.nowait = conn
        return conn

    def flush(self) -> bool:
        # A checkpoint fsyncs the WAL, then copies it into the database file and fsyncs that.
        # Frames a reader still needs are not copied (nor synced) yet: report "not done".
        _busy, wal_frames, copied = self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return bool(wal_frames == copied)

    def rows(self, first_day: str, last_day: str) -> list[LedgerRow]:
        cur = self._conn().execute(
            f"SELECT id, {', '.join(_COLUMNS)} FROM requests WHERE day >= ? AND day <= ? ORDER BY id",
            (first_day, last_day))
        return [self._row(r) for r in cur]

    @staticmethod
    def _row(r: Sequence[object]) -> LedgerRow:
        data = dict(zip(_COLUMNS, r[1:], strict=True))
        for name in ("stream", "cloud", "usage_estimated", "fallback", "downgraded"):
            data[name] = bool(data[name])
        data["cost_usd"] = Decimal(str(data["cost_usd"]))
        return LedgerRow(id=int(str(r[0])), **data)  # type: ignore[arg-type]

    def day_totals(self, day: str) -> DayTotals:
        conn = self._conn()
        totals = DayTotals()
        for client, cost in conn.execute("SELECT client, cost_usd FROM requests WHERE day = ? AND cloud = 1",
                                         (day,)):
            c = Decimal(cost)
            totals.cloud_spend += c
            totals.client_spend[client] = totals.client_spend.get(client, Decimal(0)) + c
        for rule, n in conn.execute(
                "SELECT rule, COUNT(*) FROM requests WHERE day = ? AND status != 'refused' AND downgraded = 0 "
                "GROUP BY rule", (day,)):
            totals.rule_counts[rule] = int(n)
        return totals

    # -- state -----------------------------------------------------------------------------

    def get_cutoff(self) -> CutoffState:
        r = self._conn().execute("SELECT engaged, day, reason, by, ts FROM cutoff WHERE id = 1").fetchone()
        if r is None:
            return CutoffState()
        return CutoffState(engaged=bool(r[0]), day=r[1], reason=r[2], by=r[3], ts=float(r[4]))

    def set_cutoff(self, state: CutoffState) -> None:
        self._writer().execute(
            "INSERT OR REPLACE INTO cutoff (id, engaged, day, reason, by, ts) VALUES (1, ?, ?, ?, ?, ?)",
            (int(state.engaged), state.day, state.reason, state.by, state.ts))

    def mark_alert(self, day: str, kind: str, ts: float) -> bool:
        # INSERT OR IGNORE is atomic across processes: the daemon and a cron `cutoff check`
        # racing for the same threshold send one alert between them.
        cur = self._writer().execute("INSERT OR IGNORE INTO alerts_sent (day, kind, ts) VALUES (?, ?, ?)",
                                   (day, kind, ts))
        return cur.rowcount == 1

    def alerts_sent(self, day: str) -> set[str]:
        return {r[0] for r in self._conn().execute("SELECT kind FROM alerts_sent WHERE day = ?", (day,))}

    def changed(self) -> bool:
        # data_version changes when any *other* connection commits; reading it costs no I/O.
        conn = self._conn()
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        previous = self._local.data_version
        self._local.data_version = version
        # A thread's first call cannot know what happened before it: say "changed" so it reads.
        return previous is None or version != previous

    def integrity_check(self) -> str:
        return str(self._conn().execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()
