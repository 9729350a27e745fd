"""Alerts delivered to a real SMTP server and a real webhook receiver on loopback, with retries."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from aibox_router.accounting import RequestRecord
from aibox_router.config import AlertsConfig, EmailAlertConfig, WebhookAlertConfig
from aibox_router.config_load import parse_config
from aibox_router.cost import CostControl
from aibox_router.cost.alerts import Alerter, threshold_alert
from aibox_router.internal import Usage
from aibox_router.metrics import Metrics

SECRET_PASSWORD = "s3cret-pw-do-not-log"
SECRET_TOKEN = "hook-token-do-not-log"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SmtpHandler:
    fail_first: int = 0
    messages: list[Any] = field(default_factory=list)
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.fail_first > 0:
            self.fail_first -= 1
            return "451 4.3.0 try again later"
        self.messages.append(envelope)
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == SECRET_PASSWORD.encode())


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpHandler, int]]:
    handler = SmtpHandler()
    port = free_port()
    ctl = Controller(handler, hostname="127.0.0.1", port=port, authenticator=handler.authenticate,
                     auth_require_tls=False)
    ctl.start()
    try:
        yield handler, port
    finally:
        ctl.stop()


@dataclass
class Hook:
    fail_first: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    attempts: int = 0


@pytest.fixture
def webhook() -> Iterator[tuple[Hook, str]]:
    hook = Hook()

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            hook.attempts += 1
            if hook.fail_first > 0:
                hook.fail_first -= 1
                self.send_response(500)
                self.end_headers()
                return
            hook.bodies.append(json.loads(body))
            hook.headers.append(dict(self.headers))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook, f"http://127.0.0.1:{server.server_address[1]}/hooks/{SECRET_TOKEN}"
    finally:
        server.shutdown()
        server.server_close()


ALERT = threshold_alert("daily_budget", day="2026-01-15", spend=Decimal("10.05"), daily_budget=Decimal(10),
                        threshold=Decimal(10))


def email_cfg(port: int, **kw: Any) -> EmailAlertConfig:
    return EmailAlertConfig(host="127.0.0.1", port=port, starttls=False, sender="router@example.org",
                            recipients=["ops@example.org", "lead@example.org"], **kw)


async def test_email_reaches_a_real_smtp_server(smtp: tuple[SmtpHandler, int]) -> None:
    handler, port = smtp
    alerter = Alerter(AlertsConfig(email=email_cfg(port), retry_backoff_s=0.01))
    alerter.send(ALERT)
    await alerter.drain()
    (env,) = handler.messages
    assert env.mail_from == "router@example.org"
    assert sorted(env.rcpt_tos) == ["lead@example.org", "ops@example.org"]
    text = env.content.decode()
    assert "Subject: aibox-router: daily cloud budget reached" in text
    assert "$10.05" in text and "2026-01-15" in text


async def test_email_logs_in_with_the_password_from_env_and_never_logs_it(
        smtp: tuple[SmtpHandler, int], caplog: pytest.LogCaptureFixture) -> None:
    handler, port = smtp
    handler.fail_first = 1  # first delivery refused with 451: retried
    caplog.set_level(logging.DEBUG)
    alerter = Alerter(AlertsConfig(email=email_cfg(port, username="alerts", password_env="AIBOX_TEST_SMTP_PW"),
                                   retry_backoff_s=0.01), env={"AIBOX_TEST_SMTP_PW": SECRET_PASSWORD})
    alerter.send(ALERT)
    await alerter.drain()
    assert len(handler.messages) == 1
    assert handler.logins[-1] == (b"alerts", SECRET_PASSWORD.encode())
    assert len(handler.logins) == 2  # one login per attempt
    assert "attempt 1 of 5" in caplog.text
    assert SECRET_PASSWORD not in caplog.text


async def test_webhook_retries_after_a_failure(webhook: tuple[Hook, str], caplog: pytest.LogCaptureFixture) -> None:
    hook, url = webhook
    hook.fail_first = 1
    caplog.set_level(logging.DEBUG)
    cfg = WebhookAlertConfig(url=url, headers={"Authorization": f"Bearer {SECRET_TOKEN}X"})
    alerter = Alerter(AlertsConfig(webhook=cfg, retry_backoff_s=0.01))
    alerter.send(ALERT)
    await alerter.drain()
    assert hook.attempts == 2
    (body,) = hook.bodies
    assert body["title"] == ALERT.title
    assert body["text"].startswith(ALERT.title) and ALERT.message in body["text"]
    assert body["spend"] == "10.05" and body["budget"] == "10.00" and body["day"] == "2026-01-15"
    assert body["kind"] == "daily_budget"
    assert hook.headers[0]["Authorization"] == f"Bearer {SECRET_TOKEN}X"
    assert "HTTP 500" in caplog.text
    assert SECRET_TOKEN not in caplog.text  # neither the URL's token nor the header


async def test_unreachable_channels_give_up_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    dead = free_port()  # nothing listens there
    alerter = Alerter(AlertsConfig(email=email_cfg(dead), webhook=WebhookAlertConfig(url=f"http://127.0.0.1:{dead}/x"),
                                   retry_attempts=3, retry_backoff_s=0.01))
    alerter.send(ALERT)  # must not raise
    await alerter.drain()
    assert caplog.text.count("gave up after 3 attempts") == 2


async def test_cost_control_alerts_once_per_threshold_end_to_end(tmp_path: Path, smtp: tuple[SmtpHandler, int],
                                                                 webhook: tuple[Hook, str]) -> None:
    handler, port = smtp
    hook, url = webhook
    cfg = parse_config({
        "server": {"state_dir": str(tmp_path)},
        "backends": {"cloud": {"type": "anthropic", "base_url": "http://127.0.0.1:9"}},
        "targets": {"claude": {"backend": "cloud", "model": "test-cloud"}},
        "default_target": "claude",
        "budgets": {"daily_budget": 1.0, "alert_threshold": 0.5, "emergency_cutoff": 2.0},
        "prices": [{"prefix": "test-cloud", "input": 1.0, "output": 5.0}],
        "alerts": {"email": {"host": "127.0.0.1", "port": port, "starttls": False, "sender": "r@example.org",
                             "recipients": ["ops@example.org"]},
                   "webhook": {"url": url}, "retry_backoff_s": 0.01},
    }, env={})
    cc = CostControl.open(cfg, metrics=Metrics())

    async def spend(output_tokens: int) -> None:
        await cc.settle(None, RequestRecord(ts=cc.clock(), client="c", rule="r", target="claude", backend="cloud",
                                            model="test-cloud", protocol="anthropic", stream=False, cloud=True,
                                            usage=Usage(output_tokens=output_tokens)))

    for _ in range(4):
        await spend(40_000)  # $0.20 each: 0.20, 0.40, 0.60, 0.80
    await cc.drain_alerts()
    assert [b["kind"] for b in hook.bodies] == ["alert_threshold"]
    assert len(handler.messages) == 1
    await spend(300_000)  # $2.30: budget and emergency cutoff at once
    await cc.aclose()
    assert [b["kind"] for b in hook.bodies] == ["alert_threshold", "daily_budget", "emergency_cutoff"]
    assert len(handler.messages) == 3
