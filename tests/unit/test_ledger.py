"""The SQLite ledger: round trips, day totals, persisted state, schema versions, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path

import pytest

from aibox_router.cost.ledger import SCHEMA_VERSION, CutoffState, LedgerRow, LedgerSchemaError, SqliteLedger


def row(day: str = "2026-01-15", **kw: object) -> LedgerRow:
    base: dict[str, object] = {"ts": 1_768_500_000.0, "day": day, "client": "cc", "rule": "r", "target": "t",
                               "backend": "b", "model": "m", "protocol": "anthropic", "stream": True, "cloud": True}
    base.update(kw)
    return LedgerRow(**base)  # type: ignore[arg-type]


def test_pragmas_wal_and_full_sync(tmp_path: Path) -> None:
    led = SqliteLedger(tmp_path / "l.sqlite3")
    conn = led._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    led.close()


def rows_in_database_file(path: Path, tmp_path: Path) -> int:
    """Rows in the database file proper, without its WAL: what a power cut would leave of the
    rows that were only ever written to the (unsynced) WAL."""
    copy = tmp_path / "copy-of-main-file.sqlite3"
    copy.write_bytes(path.read_bytes())
    conn = sqlite3.connect(copy)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'requests'").fetchone() is None:
            return 0  # not even the schema has been checkpointed yet
        return int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
    finally:
        conn.close()


def test_only_money_rows_are_fsynced_at_commit(tmp_path: Path) -> None:
    led = SqliteLedger(tmp_path / "l.sqlite3")
    conn = led._conn()
    led.insert(row(cloud=False), durable=False)
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: WAL write, no fsync
    led.insert(row(cloud=True))
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: fsynced before insert returns
    led.insert(row(cloud=False), durable=False)
    led.set_cutoff(CutoffState(engaged=True, day="2026-01-15", reason="r", by="t", ts=1.0))
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # the cutoff is always durable
    led.close()


def test_try_insert_never_waits_for_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    led = SqliteLedger(path)
    assert led.try_insert(row(cloud=False)) == 1
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    assert led.try_insert(row(cloud=False)) is None
    assert time.monotonic() - started < 5  # the busy timeout (10 s) did not apply
    other.execute("COMMIT")
    other.close()
    assert led.try_insert(row(cloud=False)) == 2
    assert len(led.rows("2026-01-15", "2026-01-15")) == 2
    led.close()


def test_flush_puts_local_rows_into_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    led = SqliteLedger(path)
    led.flush()  # the schema, into the database file
    for _ in range(3):
        led.insert(row(cloud=False), durable=False)
    assert rows_in_database_file(path, tmp_path) == 0  # only in the WAL so far
    assert led.flush() is True
    assert rows_in_database_file(path, tmp_path) == 3
    led.close()


def test_flush_reports_not_done_while_a_reader_holds_old_frames(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    led = SqliteLedger(path)
    led.flush()
    led.insert(row(cloud=False), durable=False)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM requests").fetchone()  # a snapshot at this frame
    led.insert(row(cloud=False), durable=False)
    assert led.flush() is False  # the newest frame cannot be checkpointed past the reader
    reader.execute("COMMIT")
    reader.close()
    assert led.flush() is True
    assert rows_in_database_file(path, tmp_path) == 2
    led.close()


def test_round_trip_keeps_every_column_and_exact_cost(tmp_path: Path) -> None:
    led = SqliteLedger(tmp_path / "l.sqlite3")
    r = row(input_tokens=1, output_tokens=2, cache_write_5m_tokens=3, cache_write_1h_tokens=4, cache_read_tokens=5,
            usage_estimated=True, cost_usd=Decimal("0.0000008"), latency_ms=12.5, ttft_ms=None, status="error",
            http_status=502, fallback=True, downgraded=True, task="debugging", complexity=7, error="boom",
            energy_j=3.25)
    rid = led.insert(r)
    assert rid == r.id and rid > 0
    (back,) = led.rows("2026-01-15", "2026-01-15")
    assert back == r
    assert isinstance(back.cost_usd, Decimal) and back.cost_usd == Decimal("0.0000008")
    led.close()


def test_day_totals(tmp_path: Path) -> None:
    led = SqliteLedger(tmp_path / "l.sqlite3")
    led.insert(row(client="a", cost_usd=Decimal("0.1"), rule="hard"))
    led.insert(row(client="a", cost_usd=Decimal("0.2"), rule="hard"))
    led.insert(row(client="b", cost_usd=Decimal("0.3"), rule="hard", status="refused"))
    led.insert(row(client="b", cost_usd=Decimal(5), cloud=False, rule="coding"))  # local: not cloud spend
    led.insert(row(client="b", rule="hard", downgraded=True, cloud=False))
    led.insert(row(day="2026-01-16", client="a", cost_usd=Decimal(9)))
    t = led.day_totals("2026-01-15")
    assert t.cloud_spend == Decimal("0.6")  # 0.1 + 0.2 + 0.3 (exact, no float drift)
    assert t.client_spend == {"a": Decimal("0.3"), "b": Decimal("0.3")}
    assert t.rule_counts == {"hard": 2, "coding": 1}  # refused and downgraded calls did not use the rule
    assert [r.day for r in led.rows("2026-01-15", "2026-01-16")].count("2026-01-16") == 1
    led.close()


def test_cutoff_and_alert_markers_persist(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    led = SqliteLedger(path)
    assert led.get_cutoff() == CutoffState()
    led.set_cutoff(CutoffState(engaged=True, day="2026-01-15", reason="spend", by="daemon", ts=5.0))
    assert led.mark_alert("2026-01-15", "daily_budget", 1.0) is True
    assert led.mark_alert("2026-01-15", "daily_budget", 2.0) is False
    led.close()
    led = SqliteLedger(path)
    state = led.get_cutoff()
    assert state.engaged and state.day == "2026-01-15" and state.by == "daemon"
    assert state.active_on("2026-01-15") and not state.active_on("2026-01-16")
    assert led.alerts_sent("2026-01-15") == {"daily_budget"}
    assert led.alerts_sent("2026-01-16") == set()
    assert led.mark_alert("2026-01-16", "daily_budget", 3.0) is True
    led.close()


def test_changed_sees_other_connections(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    daemon, cli = SqliteLedger(path), SqliteLedger(path)
    assert daemon.changed() is True  # first look: unknown, so read
    assert daemon.changed() is False
    cli.set_cutoff(CutoffState(engaged=True, day="d", reason="x", by="cli"))
    assert daemon.changed() is True
    assert daemon.get_cutoff().engaged
    assert daemon.changed() is False
    daemon.close()
    cli.close()


def test_schema_newer_than_supported_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    SqliteLedger(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(LedgerSchemaError, match="newer"):
        SqliteLedger(path)


def test_migration_hook_runs_new_steps_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aibox_router.cost import ledger as mod

    path = tmp_path / "l.sqlite3"
    SqliteLedger(path).close()
    calls: list[int] = []

    def v2(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("ALTER TABLE requests ADD COLUMN region TEXT NOT NULL DEFAULT ''")

    monkeypatch.setattr(mod, "_MIGRATIONS", [*mod._MIGRATIONS, v2])
    led = SqliteLedger(path)
    assert calls == [1]
    assert led._conn().execute("PRAGMA user_version").fetchone()[0] == mod.SCHEMA_VERSION + 1
    led.close()
    SqliteLedger(path).close()
    assert calls == [1]


def test_missing_ledger_is_not_created_when_asked_not_to(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SqliteLedger(tmp_path / "nope" / "l.sqlite3", create=False)
    assert not (tmp_path / "nope").exists()


_WRITER = textwrap.dedent("""
    import sys
    from decimal import Decimal
    from aibox_router.cost.ledger import LedgerRow, SqliteLedger
    led = SqliteLedger(sys.argv[1])
    i = 0
    while True:
        i += 1
        r = LedgerRow(ts=float(i), day="2026-01-15", client="c", rule="r", target="t", backend="b",
                      model="m", protocol="anthropic", stream=False, cloud=True, cost_usd=Decimal("0.001"),
                      error="x" * (i % 500))
        # Local calls' rows (durable=False) are not fsynced, but a crash of the process must not
        # lose them either: alternate the two kinds.
        rid = led.insert(r, durable=i % 2 == 0)
        # insert() returned: the row is committed. Tell the parent which one.
        sys.stdout.write(f"{rid}\\n")
        sys.stdout.flush()
""")


@pytest.mark.parametrize("kill_after", [37, 211])
def test_sigkill_mid_write_loses_no_committed_record(tmp_path: Path, kill_after: int) -> None:
    path = tmp_path / "l.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    reported: list[int] = []
    deadline = time.monotonic() + 60
    while len(reported) < kill_after and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        reported.append(int(line))
    # Killed while it keeps writing: mid-transaction in all likelihood.
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    reported += [int(x) for x in rest.split()]
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) >= kill_after

    led = SqliteLedger(path)
    assert led.integrity_check() == "ok"
    stored = {r.id for r in led.rows("2026-01-15", "2026-01-15")}
    assert set(reported) <= stored
    # Nothing half-written either: every stored row is complete.
    assert all(r.cost_usd == Decimal("0.001") and r.client == "c" for r in led.rows("2026-01-15", "2026-01-15"))
    led.close()


def test_a_v1_ledger_gains_the_billing_mode_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aibox_router.cost import ledger as mod

    path = tmp_path / "l.sqlite3"
    with monkeypatch.context() as m:
        m.setattr(mod, "_MIGRATIONS", mod._MIGRATIONS[:1])
        SqliteLedger(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.execute("INSERT INTO requests (ts, day, client, rule, target, backend, model, protocol, stream, cloud, "
                 "input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, "
                 "usage_estimated, cost_usd, latency_ms, status, http_status, fallback, downgraded, task, complexity, "
                 "error) VALUES (0, '2026-01-15', 'a', 'r', 't', 'cloud', 'm', 'anthropic', 1, 1, 10, 20, 0, 0, 0, 0, "
                 "'0.5', 1.0, 'ok', 200, 0, 0, '', 0, '')")
    conn.commit()
    conn.close()
    led = SqliteLedger(path)
    [row] = led.rows("2026-01-15", "2026-01-15")
    assert (row.cost_usd, row.requested_model, row.web_search_requests, row.speed, row.inference_geo) == (
        Decimal("0.5"), "", 0, "", "")
    led.insert(LedgerRow(ts=1, day="2026-01-15", client="a", rule="r", target="t", backend="cloud", model="m",
                         protocol="anthropic", stream=True, cloud=True, requested_model="claude-haiku-4-5",
                         web_search_requests=3, speed="fast", inference_geo="us"))
    new = led.rows("2026-01-15", "2026-01-15")[1]
    assert (new.requested_model, new.web_search_requests, new.speed, new.inference_geo) == (
        "claude-haiku-4-5", 3, "fast", "us")
    led.close()
