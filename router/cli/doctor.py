"""``aibox-router doctor``: check, from a developer machine, that its tools can use the aibox."""

from __future__ import annotations

import click


@click.command()
@click.option("--url", default=None, help="Router URL, e.g. http://AIBOX:8088 (default: $ANTHROPIC_BASE_URL, "
                                          "else env.ANTHROPIC_BASE_URL in ~/.claude/settings.json).")
@click.option("--key", default=None, help="Client key (default: $ANTHROPIC_AUTH_TOKEN, else env."
                                          "ANTHROPIC_AUTH_TOKEN in ~/.claude/settings.json). Never printed.")
@click.option("--timeout", "timeout_s", default=10.0, show_default=True, type=click.FloatRange(0.1, 600),
              help="Seconds to wait for the router on each quick check.")
@click.option("--answer-timeout", "answer_timeout_s", default=120.0, show_default=True,
              type=click.FloatRange(1, 3600), help="Seconds to wait for the round trip's answer (a local "
                                                  "model may have to load first).")
def doctor(url: str | None, key: str | None, timeout_s: float, answer_timeout_s: float) -> None:
    """Check the way from this machine to the aibox router, one line per check.

    \b
    Checks: settings found, router reachable, key accepted, the targets the key
    may use, MCP tools listed over /mcp, a short request answered, and (warning
    only) Claude Code's MCP registration. Exit status 1 when a check fails.
    """
    from ..doctor import run_doctor  # httpx, the MCP client side: loaded only when doctor runs

    checks, status = run_doctor(url, key, timeout_s, answer_timeout_s)
    for check in checks:
        click.echo(check.line())
    raise SystemExit(status)
