"""Cloud calls that end badly are still billed, and modes without a price are refused (issue 11): the real
router process against the Anthropic double, read back from the ledger."""

from __future__ import annotations

import base64
import sqlite3
import time
from decimal import Decimal

import httpx
import pytest

from tests.doubles.fake_anthropic import Reply
from tests.support.router_process import RouterProcess

KEY = "accounting-client-key-0123456789"


@pytest.fixture(scope="module")
def router(tmp_path_factory, fake_anthropic_server):
    workdir = tmp_path_factory.mktemp("accounting")
    config = {
        "clients": [{"name": "dev", "key": KEY}],
        "backends": {"cloud": {"type": "anthropic", "base_url": fake_anthropic_server.url,
                               "api_key_env": "ACCOUNTING_TEST_KEY"}},
        "targets": {"sonnet": {"backend": "cloud", "model": "claude-sonnet-4-6"},
                    "opus": {"backend": "cloud", "model": "claude-opus-4-6"}},
        "default_target": "sonnet",
        "budgets": {"timezone": "UTC", "daily_budget": 50.0, "alert_threshold": 40.0, "emergency_cutoff": 60.0},
        "gpu": {"enabled": False},
    }
    with RouterProcess(config, workdir, env={"ACCOUNTING_TEST_KEY": "sk-ant-test"}) as proc:
        yield proc


def rows(router) -> list[dict]:
    conn = sqlite3.connect(router.workdir / "state" / "ledger.sqlite3")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        conn.close()


def call(router, target: str = "sonnet", **body) -> httpx.Response:
    payload = {"model": "claude-sonnet-4-6", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}],
               **body}
    with httpx.stream("POST", f"{router.url}/v1/messages", json=payload, timeout=60,
                      headers={"x-api-key": KEY, "x-aibox-target": target}) as response:
        response.read()
        return response


def settled_row(router, before: int) -> dict:
    for _ in range(100):
        new = rows(router)[before:]
        if new:
            return new[-1]
        time.sleep(0.05)
    raise AssertionError("no ledger row")


def test_an_error_event_after_content_is_billed_for_what_was_sent_and_flagged(router, fake_anthropic):
    before = len(rows(router))
    text = "x" * 3000
    fake_anthropic.replies.append(Reply.text(text, stream_error="overloaded_error", stream_error_after_events=400,
                                             input_tokens=500, output_tokens=900))
    call(router, stream=True)
    row = settled_row(router, before)
    assert row["status"] == "error" and row["usage_estimated"] == 1
    # 5-character deltas: 400 events minus start, block start and ping = 397 deltas = 1985 bytes / 3
    assert row["output_tokens"] == 662 and row["input_tokens"] == 500
    assert Decimal(row["cost_usd"]) == (500 * Decimal(3) + 662 * Decimal(15)) / 1_000_000


def test_a_stream_cut_mid_thinking_is_billed_at_the_thinking_budget(router, fake_anthropic):
    before = len(rows(router))
    fake_anthropic.replies.append(Reply.thinking("deliberating " * 50, "answer", cut_after_events=6,
                                                 input_tokens=40))
    call(router, stream=True, max_tokens=16_000, thinking={"type": "enabled", "budget_tokens": 8000})
    row = settled_row(router, before)
    # Thinking that was summarised or hidden is billed in full but never seen: the budget is the estimate.
    assert row["status"] == "error" and row["usage_estimated"] == 1 and row["output_tokens"] == 8000


def test_fast_mode_is_priced_where_published_and_refused_where_not(router, fake_anthropic):
    before = len(rows(router))
    fake_anthropic.replies.append(Reply.text("fast", input_tokens=1000, output_tokens=1000))
    ok = call(router, "opus", model="claude-opus-4-6", speed="fast")
    assert ok.status_code == 200
    row = settled_row(router, before)
    assert row["speed"] == "fast" and Decimal(row["cost_usd"]) == Decimal("0.18")  # 6 x (1000 x 5 + 1000 x 25)
    sent = len(fake_anthropic.requests)
    refused = call(router, "sonnet", speed="fast")
    assert refused.status_code == 400 and len(fake_anthropic.requests) == sent  # nothing went out
    message = refused.json()["error"]["message"]
    assert "fast_multiplier" in message and "claude-sonnet-4-6" in message


def test_a_pdf_is_counted_exactly_before_the_reservation(router, fake_anthropic):
    fake_anthropic.count_tokens_result = 1234
    pdf = base64.b64encode(b"%PDF-1.4 tiny").decode()
    response = call(router, messages=[{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}},
        {"type": "text", "text": "summarise"}]}])
    assert response.status_code == 200
    paths = [r.path for r in fake_anthropic.requests]
    assert paths[-2:] == ["/v1/messages/count_tokens", "/v1/messages"]
