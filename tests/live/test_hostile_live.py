"""Hostile clients against the real router process on loopback: slow drips, oversize bodies and
heads, hostile model names on streaming cloud calls.

After each test the books must balance: no budget reservation is left in flight (a cloud call that
reserves most of the daily budget is still admitted) and the ledger holds exactly one row per
upstream call. Backends: the Anthropic API double and the Ollama double.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time

import httpx
import pytest

from tests.doubles.fake_ollama import FakeOllama
from tests.support.hostile_cases import router_config
from tests.support.router_process import RouterProcess

KEY = "hostile-live-client-key-0123"
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
MAX_BODY = 1_000_000
# Reserves about $0.093 of the $0.10 budget (4,500 output tokens plus the input bound at the 1-hour
# cache-write rate): admitted only while no other call's reservation (each at least ~$0.025) is stuck.
BIG_CALL_MAX_TOKENS = 4500


def hostile_config(anthropic_url: str, ollama_url: str) -> dict:
    return router_config(
        anthropic_url, ollama_url, cloud_key_env="HOSTILE_LIVE_KEY",
        server={"header_timeout_s": HEADER_TIMEOUT_S, "body_timeout_s": BODY_TIMEOUT_S,
                "max_header_bytes": 8192, "max_body_bytes": MAX_BODY, "log_level": "info"},
        clients=[{"name": "dev", "key": KEY}],
        budgets={"daily_budget": 0.10, "alert_threshold": 0.08, "emergency_cutoff": 1.0},
    )


@pytest.fixture(scope="module")
def ollama():
    with FakeOllama(models=["qwen2.5-coder:7b"]) as fake:
        yield fake


@pytest.fixture(scope="module")
def router(tmp_path_factory, fake_anthropic_server, ollama):
    proc = RouterProcess(hostile_config(fake_anthropic_server.url, ollama.url), tmp_path_factory.mktemp("hostile"),
                         env={"HOSTILE_LIVE_KEY": "sk-ant-live-test"})
    with proc:
        yield proc


class Books:
    """Ledger rows and upstream calls since the test began."""

    def __init__(self, router: RouterProcess, fake_anthropic, ollama: FakeOllama):
        self.router, self.fake_anthropic, self.ollama = router, fake_anthropic, ollama
        self.rows0, self.local0 = self.rows(), len(ollama.requests)

    def rows(self) -> int:
        path = self.router.workdir / "state" / "ledger.sqlite3"
        if not path.exists():
            return 0
        with sqlite3.connect(path) as db:
            return db.execute("SELECT COUNT(*) FROM requests WHERE status != 'refused'").fetchone()[0]

    def upstream_calls(self) -> int:
        cloud = sum(1 for r in self.fake_anthropic.requests if r.path == "/v1/messages")
        return cloud + len(self.ollama.requests) - self.local0

    def assert_balanced(self) -> None:
        # Rows are written as calls settle; a stream the client abandoned settles a moment later.
        deadline = time.monotonic() + 5
        while self.rows() - self.rows0 != self.upstream_calls() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.rows() - self.rows0 == self.upstream_calls(), self.router.logs()[-3000:]
        # No reservation left in flight: a call reserving most of the budget is still admitted.
        before = len(self.fake_anthropic.requests)
        r = httpx.post(f"{self.router.url}/v1/messages", headers={"x-api-key": KEY, "x-aibox-target": "claude"},
                       json={"model": "claude-sonnet-4-5", "max_tokens": BIG_CALL_MAX_TOKENS,
                             "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        assert r.status_code == 200 and r.headers["x-aibox-target"] == "claude", r.text
        assert len(self.fake_anthropic.requests) == before + 1, "a reservation is stuck in flight"
        assert self.rows() - self.rows0 == self.upstream_calls()


@pytest.fixture
def books(router, fake_anthropic, ollama):
    books = Books(router, fake_anthropic, ollama)
    yield books
    books.assert_balanced()
    assert httpx.get(f"{router.url}/health").status_code == 200


def connect(router: RouterProcess) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    return s


def read_until_closed(s: socket.socket, limit_s: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (or *limit_s* passes)."""
    s.settimeout(0.2)
    data, deadline = b"", time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"connection still open after {limit_s} s; got {data[:200]!r}")


HEAD = (b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: " + KEY.encode()
        + b"\r\ncontent-type: application/json\r\n")


def test_slowloris_mid_header_and_idle_connections_are_closed(router, books):
    dripping = [connect(router) for _ in range(30)]
    idle = [connect(router) for _ in range(10)]
    for s in dripping:
        s.sendall(HEAD[:40])
    started = time.monotonic()
    for _ in range(4):  # keep dripping one byte per connection for a while
        time.sleep(0.3)
        for s in dripping:
            try:
                s.sendall(b"x")
            except OSError:
                pass
    answers = [read_until_closed(s) for s in dripping + idle]
    elapsed = time.monotonic() - started
    assert all(a == b"" or a.startswith(b"HTTP/1.1 408") for a in answers)
    assert any(a.startswith(b"HTTP/1.1 408") for a in answers[:30])
    print(f"40 stalled connections closed {elapsed:.1f} s after the first bytes (header_timeout_s "
          f"{HEADER_TIMEOUT_S})")
    for s in dripping + idle:
        s.close()


def test_slowloris_mid_body_gets_408_and_the_connection_closes(router, books):
    conns = [connect(router) for _ in range(20)]
    for s in conns:
        s.sendall(HEAD + b"content-length: 5000\r\n\r\n" + b'{"model": ')
    for _ in range(4):
        time.sleep(0.3)
        for s in conns:
            try:
                s.sendall(b" ")
            except OSError:
                pass
    for s in conns:
        answer = read_until_closed(s)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"server.body_timeout_s" in answer
        s.close()


def test_oversize_head_gets_431(router, books):
    s = connect(router)
    s.sendall(HEAD + b"x-filler: " + b"a" * 100_000 + b"\r\n\r\n")
    answer = read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 431") and b"server.max_header_bytes" in answer
    s.close()


def test_announced_oversize_body_is_refused_before_it_is_sent(router, books):
    s = connect(router)
    s.sendall(HEAD + b"content-length: 40000000\r\n\r\n")  # and not one byte of the body
    answer = read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer
    s.close()


def test_chunked_oversize_body_is_refused_while_it_arrives(router, books):
    s = connect(router)
    s.sendall(HEAD + b"transfer-encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % 65536 + b" " * 65536 + b"\r\n"
    sent = 0
    try:
        while sent < 40_000_000:
            s.sendall(chunk)
            sent += 65536
    except OSError:
        pass  # the router answered and closed while we were still sending
    answer = read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 40_000_000
    print(f"chunked upload cut off after {sent / 1e6:.1f} MB (limit {MAX_BODY / 1e6:.1f} MB)")
    s.close()


@pytest.mark.parametrize("model", ["claude-opus-\u2603", "claude-opus-4\r\nx-injected: yes", "claude-opus-4\n"])
def test_hostile_model_name_on_a_streaming_cloud_call(router, books, fake_anthropic, model):
    body = {"model": model, "max_tokens": BIG_CALL_MAX_TOKENS, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", f"{router.url}/v1/messages", headers={"x-api-key": KEY}, content=json.dumps(body),
                      timeout=30) as r:
        assert r.status_code == 200
        text = r.read().decode()
    assert "event: message_stop" in text
    assert r.headers["x-aibox-rule"] == "alias:claude-opus-*" and "x-injected" not in r.headers
    assert fake_anthropic.requests[-1].body["model"] == "claude-sonnet-4-5-20250929"
    metrics = httpx.get(f"{router.url}/metrics").text
    assert "\u2603" not in metrics and "x-injected" not in metrics


def test_stream_abandoned_by_the_client_is_settled(router, books, fake_anthropic):
    fake_anthropic.delay_s = 0.2
    body = {"model": "claude-opus-4", "max_tokens": BIG_CALL_MAX_TOKENS, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", f"{router.url}/v1/messages", headers={"x-api-key": KEY}, json=body,
                      timeout=30) as r:
        assert r.status_code == 200
        next(r.iter_bytes())  # one chunk, then hang up
    fake_anthropic.delay_s = 0.0


def test_log_line_of_a_stream_carries_its_real_outcome(router, books, fake_anthropic):
    from tests.doubles.fake_anthropic import Reply

    fake_anthropic.replies.append(Reply(stream_error="overloaded_error"))
    body = {"model": "claude-opus-4", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream("POST", f"{router.url}/v1/messages", headers={"x-api-key": KEY}, json=body,
                      timeout=30) as r:
        assert r.status_code == 200
        assert b"overloaded_error" in r.read()
    request_id = r.headers["x-aibox-request-id"]
    logs = router.wait_for_log(f"id={request_id}")
    line = next(ln for ln in logs.splitlines() if f"id={request_id}" in ln)
    assert "status=502 stream=error" in line, line
