"""Budget alerts by email (SMTP) and webhook (JSON POST).

Alerts must never hurt serving: ``send`` only schedules background tasks, every failure is
logged and retried with exponential backoff, nothing is raised to the caller. Secrets (the SMTP
password, webhook headers, the webhook URL's path and query, which for Slack-style hooks *is* the
secret) never reach the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import smtplib
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..config import AlertsConfig, EmailAlertConfig, WebhookAlertConfig

log = logging.getLogger("aibox_router.cost.alerts")

# Alert kinds, one per threshold; each is sent at most once per budget day.
ALERT_THRESHOLD = "alert_threshold"
DAILY_BUDGET = "daily_budget"
EMERGENCY_CUTOFF = "emergency_cutoff"


@dataclass(frozen=True)
class Alert:
    kind: str
    title: str
    message: str
    day: str
    spend_usd: Decimal
    budget_usd: Decimal

    def as_json(self) -> dict[str, object]:
        # `text` is what Slack/Mattermost-style incoming webhooks display; ntfy shows the raw body.
        return {
            "title": self.title,
            "message": self.message,
            "text": f"{self.title}\n{self.message}",
            "kind": self.kind,
            "day": self.day,
            "spend": f"{self.spend_usd:.2f}",
            "budget": f"{self.budget_usd:.2f}",
        }


def threshold_alert(kind: str, *, day: str, spend: Decimal, daily_budget: Decimal, threshold: Decimal) -> Alert:
    """The alert for crossing *threshold* (one of the three budget amounts) on *day*."""
    headline = {
        ALERT_THRESHOLD: "cloud spend passed the alert threshold",
        DAILY_BUDGET: "daily cloud budget reached; cloud requests now go to local models",
        EMERGENCY_CUTOFF: "EMERGENCY CUTOFF engaged; all cloud requests are refused",
    }.get(kind, kind)
    message = (f"Cloud spend on {day} is ${spend:.2f} (threshold ${threshold:.2f}, daily budget "
               f"${daily_budget:.2f}).")
    if kind == EMERGENCY_CUTOFF:
        message += (" The cutoff lifts when the budget day ends, or with `aibox-router cutoff release` "
                    "once the emergency cutoff amount is raised.")
    return Alert(kind=kind, title=f"aibox-router: {headline}", message=message, day=day, spend_usd=spend,
                 budget_usd=daily_budget)


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}/..."


class _Redact(logging.Filter):
    """Rewrites records of httpx's own logger, which logs every request URL at INFO level."""

    def __init__(self) -> None:
        super().__init__()
        self.replacements: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if self.replacements:
            msg = record.getMessage()
            if any(secret in msg for secret in self.replacements):
                for secret, safe in self.replacements.items():
                    msg = msg.replace(secret, safe)
                record.msg, record.args = msg, None
        return True


_REDACT = _Redact()
logging.getLogger("httpx").addFilter(_REDACT)


def _protect(config: AlertsConfig) -> None:
    if config.webhook is not None:
        url = config.webhook.url
        _REDACT.replacements[url] = _safe_url(url)
        parts = urlsplit(url)
        for secret in (parts.path, parts.query):  # httpx may log the URL normalised
            if len(secret) >= 8:
                _REDACT.replacements[secret] = "/..."
        for value in config.webhook.headers.values():
            if len(value) >= 8:
                _REDACT.replacements[value] = "<redacted>"


class Alerter:
    """Sends alerts over the configured channels in background tasks."""

    def __init__(self, config: AlertsConfig, *, env: Mapping[str, str] | None = None):
        self.config = config
        self._env = env
        self._tasks: set[asyncio.Task[bool]] = set()
        # Each channel delivers in order: "80% spent" must not arrive after "cutoff engaged".
        self._last: dict[str, asyncio.Task[bool]] = {}
        _protect(config)

    def reload(self, config: AlertsConfig) -> None:
        self.config = config
        _protect(config)

    @property
    def configured(self) -> bool:
        return self.config.email is not None or self.config.webhook is not None

    def send(self, alert: Alert) -> None:
        """Schedule *alert* on every channel; returns at once. Needs a running event loop."""
        if alert.kind == "report":  # the report itself is no warning, and too long for a log line
            log.info("sending %s", alert.title)
        else:
            log.warning("alert: %s: %s", alert.title, alert.message)
        channels: list[tuple[str, Callable[[Any, Alert], Awaitable[None]], Any]] = []
        if self.config.email is not None:
            channels.append(("email", self._send_email, self.config.email))
        if self.config.webhook is not None:
            channels.append(("webhook", self._send_webhook, self.config.webhook))
        for name, fn, cfg in channels:
            previous = self._last.get(name)
            task = asyncio.get_running_loop().create_task(self._after(previous, name, fn, cfg, alert))
            self._last[name] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _after(self, previous: asyncio.Task[bool] | None, name: str,
                     fn: Callable[[Any, Alert], Awaitable[None]], cfg: object, alert: Alert) -> bool:
        if previous is not None and not previous.done():
            await asyncio.gather(previous, return_exceptions=True)
        return await self._with_retries(name, fn, cfg, alert)

    async def send_and_wait(self, alert: Alert) -> bool:
        """Send *alert* on every channel and wait; True when every channel delivered it (CLI use)."""
        if not self.configured:
            return False
        self.send(alert)
        results = await asyncio.gather(*[self._last[name] for name in ("email", "webhook") if name in self._last],
                                       return_exceptions=True)
        return all(r is True for r in results)

    async def drain(self) -> None:
        """Wait until every scheduled alert was delivered or gave up (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _with_retries(self, name: str, fn: Callable[[Any, Alert], Awaitable[None]], cfg: object,
                            alert: Alert) -> bool:
        attempts = max(1, self.config.retry_attempts)
        for attempt in range(1, attempts + 1):
            try:
                await fn(cfg, alert)
                log.info("alert %s sent by %s (attempt %d)", alert.kind, name, attempt)
                return True
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure is retried, none may reach serving
                # Only the exception type and its message: smtplib/httpx messages carry no secrets.
                log.warning("alert %s by %s failed (attempt %d of %d): %s: %s", alert.kind, name, attempt,
                            attempts, type(e).__name__, e)
            if attempt < attempts:
                await asyncio.sleep(self.config.retry_backoff_s * (2 ** (attempt - 1)))
        log.error("alert %s by %s gave up after %d attempts", alert.kind, name, attempts)
        return False

    # -- channels ---------------------------------------------------------------------------

    async def _send_email(self, cfg: EmailAlertConfig, alert: Alert) -> None:
        password = None
        if cfg.password_env:
            env = os.environ if self._env is None else self._env
            password = env.get(cfg.password_env)
            if password is None:
                raise RuntimeError(f"environment variable {cfg.password_env} (alerts.email.password_env) "
                                   "is not set")
        msg = EmailMessage()
        msg["Subject"] = alert.title
        msg["From"] = cfg.sender
        msg["To"] = ", ".join(cfg.recipients)
        msg.set_content(alert.message)
        # smtplib is blocking; a thread keeps the event loop serving meanwhile.
        await asyncio.to_thread(_smtp_send, cfg, password, msg)

    async def _send_webhook(self, cfg: WebhookAlertConfig, alert: Alert) -> None:
        async with httpx.AsyncClient(timeout=15.0) as client:
            resp = await client.post(cfg.url, json=alert.as_json(), headers=cfg.headers)
        if resp.status_code >= 300:
            raise RuntimeError(f"webhook {_safe_url(cfg.url)} answered HTTP {resp.status_code}")


def _smtp_send(cfg: EmailAlertConfig, password: str | None, msg: EmailMessage) -> None:
    if cfg.port == 465:  # implicit TLS ("SMTPS"); STARTTLS does not apply
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=30,
                                              context=ssl.create_default_context())
    else:
        smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=30)
    with smtp:
        smtp.ehlo()
        if cfg.starttls and cfg.port != 465:
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if cfg.username:
            smtp.login(cfg.username, password or "")
        smtp.send_message(msg)
