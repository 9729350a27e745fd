"""Which target answers: ordered rules whose conditions are sandboxed Jinja2 expressions.

A rule's ``when`` is compiled once with Jinja2's sandboxed expression compiler (no attribute
access to internals, no imports, no side effects) and evaluated against the request's features.
Unknown names are errors, caught at ``config check`` time, not silently false.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from .config import RouterConfig, RuleConfig
from .errors import PermissionDeniedError
from .features import Features, alias_pattern
from .gpu import FEATURE_NAMES as GPU_FEATURE_NAMES

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)

# A representative feature set used to validate expressions (names and types) at config load.
_SAMPLE = Features(model="claude-sonnet-4-5", model_class="sonnet",
                   gpu=dict.fromkeys(GPU_FEATURE_NAMES, 0.0)).as_namespace()


def compile_expression(expr: str) -> Callable[..., Any]:
    return _ENV.compile_expression(expr, undefined_to_none=False)


def expression_error(expr: str) -> str | None:
    """Why *expr* is not a usable rule condition, or None if it is."""
    try:
        fn = compile_expression(expr)
    except TemplateSyntaxError as e:
        return f"invalid expression {expr!r}: {e.message}"
    try:
        fn(**_SAMPLE)
    except UndefinedError as e:
        return f"unknown name in {expr!r}: {e.message}; known features: {', '.join(sorted(_SAMPLE))}"
    except SecurityError as e:
        return f"expression {expr!r} is not allowed: {e}"
    except Exception as e:  # noqa: BLE001 - type errors such as comparing str and int
        return f"expression {expr!r} fails on a sample request: {type(e).__name__}: {e}"
    return None


@dataclass
class RuleTrace:
    rule: str
    matched: bool
    note: str = ""


@dataclass
class RouteDecision:
    target: str
    # The rule that matched, "override", "route:<name>", "alias:<glob>" or "default": always a name
    # from the config, never the client's text (it goes into a response header, a metrics label and
    # the ledger).
    rule: str
    reason: str
    trace: list[RuleTrace] = field(default_factory=list)


class RuleEngine:
    """Evaluates ordered rules; ``count_today(rule)`` says how many requests a rule sent today."""

    def __init__(self, config: RouterConfig, count_today: Callable[[str], int]):
        self.config = config
        self._count_today = count_today
        self._compiled: list[tuple[RuleConfig, Callable[..., Any]]] = [
            (rule, compile_expression(rule.when)) for rule in config.rules
        ]
        # All conditions as one list expression: one template render per request instead of one per
        # rule (each render costs ~15 us). Each part was validated on its own at config load.
        self._all = compile_expression("[" + ", ".join(f"({r.when})" for r in config.rules) + "]")
        # A route's own target acts as a rule `route == "<name>"` after all the rules.
        self._route_targets = {r.name: r.target for r in config.routes if r.target}

    def _evaluate(self, namespace: dict[str, Any]) -> list[Any]:
        """Each rule's condition value, or the exception it raised (one bad rule spoils no other)."""
        try:
            return list(self._all(**namespace))
        except Exception:  # noqa: BLE001 - find which rule failed, one by one
            results: list[Any] = []
            for _, condition in self._compiled:
                try:
                    results.append(condition(**namespace))
                except Exception as e:  # noqa: BLE001 - a rule must never take the router down
                    results.append(e)
            return results

    def decide(self, features: Features) -> RouteDecision:
        cfg = self.config
        allowed = cfg.client_targets(features.client)
        trace: list[RuleTrace] = []
        if features.override != "none":
            decision = self._override(features, allowed, trace)
            if decision is not None:
                return decision
        for (rule, _), value in zip(self._compiled, self._evaluate(features.as_namespace()), strict=True):
            if isinstance(value, Exception):  # treated as not matching
                trace.append(RuleTrace(rule.name, False, f"error evaluating: {type(value).__name__}: {value}"))
                continue
            if not value:
                trace.append(RuleTrace(rule.name, False, f"condition false: {rule.when}"))
                continue
            if allowed is not None and rule.target not in allowed:
                trace.append(RuleTrace(rule.name, False, f"condition true but client {features.client!r} "
                                                         f"may not use target {rule.target!r}"))
                continue
            if rule.daily_limit is not None:
                used = self._count_today(rule.name)
                if used >= rule.daily_limit:
                    trace.append(RuleTrace(rule.name, False,
                                           f"condition true but daily_limit reached ({used}/{rule.daily_limit})"))
                    continue
            trace.append(RuleTrace(rule.name, True, f"condition true: {rule.when}"))
            return RouteDecision(rule.target, rule.name, f"rule {rule.name!r}: {rule.when}", trace)
        route_target = self._route_targets.get(features.route)
        if route_target is not None and (allowed is None or route_target in allowed):
            return RouteDecision(route_target, f"route:{features.route}",
                                 f"no rule matched; route {features.route!r} has target {route_target!r}", trace)
        if features.alias != "none" and (allowed is None or features.alias in allowed):
            pattern = alias_pattern(features.model, cfg.aliases) or "?"
            return RouteDecision(features.alias, f"alias:{pattern}",
                                 f"no rule matched; alias {pattern!r} maps the model to {features.alias!r}", trace)
        if allowed is None or cfg.default_target in allowed:
            return RouteDecision(cfg.default_target, "default", "no rule matched; default_target", trace)
        first = next(t for t in cfg.targets if t in allowed)  # config check: targets is not empty
        return RouteDecision(first, "default", f"no rule matched; default_target {cfg.default_target!r} is not "
                                               f"allowed for client {features.client!r}: its first target", trace)

    def _override(self, features: Features, allowed: frozenset[str] | None,
                  trace: list[RuleTrace]) -> RouteDecision | None:
        """The decision for a target the client named (header or model name), or None to use the rules.

        A target guarded by a rule's ``daily_limit`` is counted against that rule, so naming the
        target cannot get around the limit; once it is used up, the rules decide as usual.
        """
        cfg = self.config
        name = features.override
        if name not in cfg.targets:
            trace.append(RuleTrace("override", False, f"unknown target {name[:64]!r} in {cfg.override_header}; "
                                                      "ignored"))
            return None
        if allowed is not None and name not in allowed:
            raise PermissionDeniedError(f"client {features.client!r} may not choose target {name!r}; its "
                                        f"targets are {sorted(allowed)}")
        guard = next((r for r in cfg.rules if r.target == name and r.daily_limit is not None), None)
        if guard is None:
            return RouteDecision(name, "override", f"client asked for target {name!r}", trace)
        assert guard.daily_limit is not None
        used = self._count_today(guard.name)
        if used >= guard.daily_limit:
            trace.append(RuleTrace("override", False, f"client asked for target {name!r}, but rule "
                                                      f"{guard.name!r}'s daily_limit for it is reached "
                                                      f"({used}/{guard.daily_limit}); ignored"))
            return None
        return RouteDecision(name, guard.name, f"client asked for target {name!r}; counted against rule "
                                               f"{guard.name!r}'s daily_limit ({used}/{guard.daily_limit})", trace)
