"""Operator commands over the ledger: ``report``, ``cutoff check|engage|release``, ``budget show``.

They share ``<state_dir>/ledger.sqlite3`` with a running daemon (SQLite WAL: readers and the
writer do not block each other); the daemon sees a cutoff engaged or released here within about
a second. Run them as the daemon's user: a file SQLite creates here must stay writable for it.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sqlite3
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import click

from ..config import RouterConfig
from ..cost.alerts import Alert, Alerter, threshold_alert
from ..cost.budget import BudgetLimits, day_of, due_alerts
from ..cost.budget_view import budget_view, dollars
from ..cost.ledger import LEDGER_FILENAME, CutoffState, LedgerSchemaError, SqliteLedger
from ..cost.report import build_report, day_range, format_report, report_to_json
from ..pricing import find_price, usd
from . import config_option
from .common import load_or_exit


def _ledger_path(cfg: RouterConfig) -> Path:
    return Path(cfg.server.state_dir) / LEDGER_FILENAME


def _open(cfg: RouterConfig, *, create: bool) -> SqliteLedger | None:
    """The ledger, or None when there is none yet and *create* is False (never ran: nothing spent)."""
    try:
        return SqliteLedger(_ledger_path(cfg), create=create)
    except FileNotFoundError:
        return None
    except (sqlite3.Error, LedgerSchemaError, OSError) as e:
        raise click.ClickException(f"cannot read the ledger {_ledger_path(cfg)}: {e}") from None


def _who() -> str:
    try:
        return f"operator:{getpass.getuser()}"
    except (OSError, KeyError):  # no user name in minimal containers
        return "operator"


def _today(cfg: RouterConfig) -> str:
    return day_of(time.time(), BudgetLimits.from_config(cfg).timezone)


def _load_with_ledger(config_path: str | None) -> RouterConfig:
    """The config, refusing to guess: without -c (or $AIBOX_ROUTER_CONFIG) on a machine with no ledger
    at the embedded default's state dir, figures would be a made-up $0.00 and writes would start a
    new ledger nobody reads."""
    cfg = load_or_exit(config_path)
    if config_path is None and not _ledger_path(cfg).exists():
        raise click.ClickException(
            f"no config given (-c FILE or $AIBOX_ROUTER_CONFIG) and no ledger at {_ledger_path(cfg)}, where the "
            "embedded default config keeps it; pass the router's config, e.g. -c /etc/aibox-router/config.yml")
    return cfg


def _resolve_day(cfg: RouterConfig, value: str | None) -> str:
    """--date: YYYY-MM-DD, or ``today`` / ``yesterday`` in the budget's time zone (default: today)."""
    today = _today(cfg)
    if value in (None, "today"):
        return today
    if value == "yesterday":
        return (date.fromisoformat(today) - timedelta(days=1)).isoformat()
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise click.BadParameter(f"expected YYYY-MM-DD, today or yesterday, found {value!r}",
                                 param_hint="--date") from None


def _check_chart_path(chart: str) -> None:
    """Before any work is done: the format from the suffix, and a directory that exists."""
    p = Path(chart)
    if p.suffix.lower() not in (".png", ".html", ".htm"):
        raise click.BadParameter(f"{chart}: the chart file must end in .png or .html", param_hint="--chart")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise click.BadParameter(f"{chart}: directory {parent} does not exist", param_hint="--chart")


# -- report ------------------------------------------------------------------------------------


@click.command()
@config_option
@click.option("--date", "date_", metavar="YYYY-MM-DD|today|yesterday",
              help="Last day of the report, in the budget's time zone (default: today, which is not over yet; "
                   "the daily cron job reports yesterday).")
@click.option("--days", type=click.IntRange(1, 3660), default=1, show_default=True,
              help="How many days, ending at --date.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--chart", type=click.Path(dir_okay=False), default=None,
              help="Also draw the report (spend vs budget, local share, the goals) to this .png or .html file.")
@click.option("--reference-model", default=None,
              help="Cloud model that prices local traffic for the savings figure (default: first cloud "
                   "target's model); it must have an entry in prices.")
@click.option("--send", is_flag=True,
              help="Deliver the report through the config's alert channels (alerts.email / alerts.webhook) "
                   "instead of printing it; exits 1 when no channel is configured or delivery failed.")
def report(config_path: str | None, date_: str | None, days: int, as_json: bool, chart: str | None,
           reference_model: str | None, send: bool) -> None:
    """Spend, local share, savings, latency and availability from the ledger."""
    cfg = _load_with_ledger(config_path)
    if chart:
        _check_chart_path(chart)
    if reference_model is not None and find_price(cfg.prices, reference_model) is None:
        raise click.BadParameter(f"{reference_model!r} has no entry in the config's prices, so local traffic "
                                 "could not be priced (savings would read $0.00); pick a priced model",
                                 param_hint="--reference-model")
    if send and not Alerter(cfg.alerts).configured:
        raise click.ClickException("--send: the config has no alert channel (alerts.email / alerts.webhook) "
                                   "to send the report to")
    last = _resolve_day(cfg, date_)
    first, last = day_range(last, days)
    led = _open(cfg, create=False)
    if led is None:
        click.echo(f"note: no ledger at {_ledger_path(cfg)} yet; the report is empty", err=True)
        rows = []
    else:
        try:
            rows = led.rows(first, last)
        except sqlite3.Error as e:
            raise click.ClickException(f"cannot read the ledger {_ledger_path(cfg)}: {e}") from None
        finally:
            led.close()
    rep = build_report(rows, cfg, first_day=first, last_day=last, reference_model=reference_model)
    text = json.dumps(report_to_json(rep), indent=2) if as_json else format_report(rep)
    if send:
        _send_report(cfg, first, last, text)
    else:
        click.echo(text)
    if chart:
        from ..cost.chart import write_chart  # matplotlib's module: loaded only when a chart is asked for

        try:
            path = write_chart(rep, chart, emergency_cutoff=cfg.budgets.emergency_cutoff)
        except (ValueError, OSError) as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"chart written to {path}", err=True)


def _send_report(cfg: RouterConfig, first: str, last: str, text: str) -> None:
    span = first if first == last else f"{first} .. {last}"
    alert = Alert(kind="report", title=f"aibox-router report {span}", message=text, day=last,
                  spend_usd=Decimal(0), budget_usd=usd(cfg.budgets.daily_budget))
    alerter = Alerter(cfg.alerts)

    async def deliver() -> bool:
        return await alerter.send_and_wait(alert)

    if not asyncio.run(deliver()):
        raise click.ClickException("the report could not be delivered on every alert channel (see the log above)")


# -- cutoff ------------------------------------------------------------------------------------


@click.group()
def cutoff() -> None:
    """The emergency cutoff: while engaged, every cloud request is refused (until the day ends)."""


@cutoff.command("check")
@config_option
@click.option("--verbose", "-v", is_flag=True, help="Also say when there was nothing to do (spend, cutoff state).")
@click.option("--quiet", "-q", is_flag=True, hidden=True, help="Accepted for old cron lines; silence is the default.")
def cutoff_check(config_path: str | None, verbose: bool, quiet: bool) -> None:
    """For cron (hourly): engage the cutoff and alert if today's spend reached emergency_cutoff.

    Prints only when it acts (engages the cutoff, sends an alert), so cron mails only then; -v
    reports the state every time. Exits 0 when all is well, including when it just engaged the
    cutoff; non-zero only when the config or the ledger cannot be read.
    """
    cfg = load_or_exit(config_path)
    verbose = verbose and not quiet
    led = _open(cfg, create=False)
    if led is None:
        if verbose:
            click.echo(f"no ledger at {_ledger_path(cfg)} yet: nothing spent")
        return
    limits = BudgetLimits.from_config(cfg)
    day = _today(cfg)
    try:
        spend = led.day_totals(day).cloud_spend
        state = led.get_cutoff()
        engaged_now = False
        if spend > 0 and spend >= limits.emergency_cutoff and not state.active_on(day):
            state = CutoffState(engaged=True, day=day, by="cutoff check", ts=time.time(),
                                reason=f"cloud spend ${spend:.2f} reached the emergency cutoff "
                                       f"${limits.emergency_cutoff:.2f}")
            led.set_cutoff(state)
            engaged_now = True
        # Any threshold alert nobody sent yet (the daemon may have died before it could).
        to_send = [(k, t) for k, t in due_alerts(spend, limits, led.alerts_sent(day))
                   if led.mark_alert(day, k, time.time())]
    except sqlite3.Error as e:
        raise click.ClickException(f"cannot read the ledger {_ledger_path(cfg)}: {e}") from None
    finally:
        led.close()
    if to_send:
        alerter = Alerter(cfg.alerts)

        async def deliver() -> None:
            for kind, threshold in to_send:
                alerter.send(threshold_alert(kind, day=day, spend=spend, daily_budget=limits.daily_budget,
                                             threshold=threshold))
            await alerter.drain()

        asyncio.run(deliver())
        click.echo(f"sent {', '.join(kind for kind, _ in to_send)} alert(s): cloud spend {dollars(spend)} on {day}")
        if not alerter.configured:
            click.echo("warning: no alert channel configured (alerts.email / alerts.webhook)", err=True)
    active = state.active_on(day)
    if engaged_now:
        click.echo(f"ENGAGED the emergency cutoff: {state.reason}")
    elif active and verbose:
        click.echo(f"cutoff engaged for {day} by {state.by}: {state.reason}")
    elif verbose:
        click.echo(f"ok: cloud spend {dollars(spend)} on {day}, emergency cutoff at "
                   f"{dollars(limits.emergency_cutoff)}")


@cutoff.command("engage")
@config_option
@click.option("--reason", default="engaged by an operator", show_default=True,
              help="Why; shown by budget show and status, and in the ledger.")
def cutoff_engage(config_path: str | None, reason: str) -> None:
    """Refuse all cloud requests for the rest of today (the daemon notices within a second)."""
    cfg = _load_with_ledger(config_path)
    led = _open(cfg, create=True)
    assert led is not None
    day = _today(cfg)
    try:
        led.set_cutoff(CutoffState(engaged=True, day=day, reason=reason, by=_who(), ts=time.time()))
    except sqlite3.Error as e:
        raise click.ClickException(f"cannot write the ledger {_ledger_path(cfg)}: {e}") from None
    finally:
        led.close()
    click.echo(f"emergency cutoff engaged for {day}: {reason}")


@cutoff.command("release")
@config_option
def cutoff_release(config_path: str | None) -> None:
    """Allow cloud requests again (within budget) before the day ends."""
    cfg = _load_with_ledger(config_path)
    led = _open(cfg, create=False)
    if led is None:
        click.echo("cutoff not engaged (no ledger yet)")
        return
    limits = BudgetLimits.from_config(cfg)
    day = _today(cfg)
    try:
        was = led.get_cutoff()
        led.set_cutoff(CutoffState(engaged=False, day=day, reason="released", by=_who(), ts=time.time()))
        spend = led.day_totals(day).cloud_spend
    except sqlite3.Error as e:
        raise click.ClickException(f"cannot write the ledger {_ledger_path(cfg)}: {e}") from None
    finally:
        led.close()
    click.echo("emergency cutoff released" if was.active_on(day) else "cutoff was not engaged today")
    if spend > 0 and spend >= limits.emergency_cutoff:
        click.echo(f"warning: today's cloud spend {dollars(spend)} is at or above budgets.emergency_cutoff "
                   f"{dollars(limits.emergency_cutoff)}; the daemon engages the cutoff again on the next cloud "
                   "request. Raise the limit in the config (and reload) first.", err=True)


# -- budget ------------------------------------------------------------------------------------


@click.group()
def budget() -> None:
    """Today's budget."""


@budget.command("show")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def budget_show(config_path: str | None, as_json: bool) -> None:
    """Spend today, what remains, the thresholds, the cutoff and per-client spend."""
    cfg = _load_with_ledger(config_path)
    led = _open(cfg, create=False)
    try:
        view = budget_view(cfg, led, time.time())
    except sqlite3.Error as e:
        raise click.ClickException(f"cannot read the ledger {_ledger_path(cfg)}: {e}") from None
    finally:
        if led is not None:
            led.close()
    if as_json:
        click.echo(json.dumps(view.as_json(), indent=2))
        return
    click.echo(f"budget day       {view.day} ({view.timezone})")
    click.echo(f"cloud spend      {dollars(view.spend)} of {dollars(view.limits.daily_budget)}  "
               f"({dollars(view.remaining)} remaining)")
    click.echo(f"alert at         {dollars(view.limits.alert_threshold)}"
               + ("  (sent)" if "alert_threshold" in (view.alerts_sent or ()) else ""))
    click.echo(f"emergency cutoff {dollars(view.limits.emergency_cutoff)}")
    if view.cutoff_engaged:
        click.echo(f"cutoff           ENGAGED by {view.cutoff.by}: {view.cutoff.reason}")
    else:
        click.echo("cutoff           not engaged")
    for c, (spent, cap) in view.clients().items():
        click.echo(f"client {c:<16} {dollars(spent)}" + (f" of {dollars(cap)}" if cap is not None else ""))
