"""Features and rules: the users' routing plan, expressed by the default config, routes as they wrote it."""

from __future__ import annotations

import pytest

from aibox_router.classifier import RouteClassifier
from aibox_router.cli.common import default_config_path
from aibox_router.config_load import load_config
from aibox_router.features import (
    _COMPILED,
    _TASK_PATTERNS,
    classify_task,
    complexity_score,
    extract_features,
    required_literal,
)
from aibox_router.rules import RuleEngine

CFG = load_config(default_config_path(), env={})


def features(text, model="claude-sonnet-4-5", **kw):
    request = {"model": model, "max_tokens": 512, "messages": [{"role": "user", "content": text}], **kw}
    return extract_features(request, body_size=len(str(request)), client="t", protocol="anthropic",
                            aliases=CFG.aliases)


@pytest.mark.parametrize("text,task", [
    ("Write a Python function that parses ISO dates", "code_generation"),
    ("Implement a retry decorator with backoff", "code_generation"),
    ("I get a KeyError traceback when I run this, please fix it", "debugging"),
    ("Add docstrings and update the README for this module", "documentation"),
    ("Explain what this regex does", "explanation"),
    ("Find all similar patterns across the logs and detect anomalies", "pattern_recognition"),
    ("Plan the migration of our architecture to a roadmap with steps", "planning"),
    ("hello there", "general"),
])
def test_task_classification(text, task):
    assert classify_task(text) == task


def test_system_reminders_do_not_steer_classification():
    text = "<system-reminder>fix the bug error traceback debug</system-reminder>Explain how this works"
    assert classify_task(text) == "explanation"


@pytest.mark.parametrize("pattern,literal", [
    (r"\bdebug", "debug"), (r"doesn'?t work", "doesn"), (r"\bstack ?trace", "stack"),
    (r"\bwhat (is|are|does)\b", "what "), (r"\bfix(es|ing)?\b", "fix"), (r"```", "```"),
    (r"\bAPI docs?\b", "api doc"), (r"(a|b)c", ""), (r"ab|cd", ""), (r"a\|b", "a"),
])
def test_required_literal(pattern, literal):
    assert required_literal(pattern) == literal


def test_every_task_pattern_has_a_prefilter_literal():
    # An empty literal is still correct (the regex always runs), only slow: keep patterns prefilterable.
    assert all(literal for patterns in _COMPILED.values() for literal, _ in patterns)


@pytest.mark.parametrize("text", [
    "WHY DOES the build FAIL? Stack trace below", "Doesnt work after the MIGRATION", "What's the plan?",
    "Please write a Test for this CLASS", "```py\nx = 1\n```", "api doc", "steps to reproduce", "whatever",
    "Analyse the LOGS for correlations across all services", "x" * 5000 + " fix the bug",
])
def test_prefilter_never_changes_a_pattern_verdict(text):
    import re

    for task, patterns in _TASK_PATTERNS.items():
        for (literal, compiled), pattern in zip(_COMPILED[task], patterns, strict=True):
            full = re.search(pattern, text[:4000], re.IGNORECASE) is not None
            assert (literal in text[:4000].lower() and compiled.search(text[:4000]) is not None) == full, pattern


def test_complexity_stays_low_for_short_questions_and_rises_for_hard_work():
    assert complexity_score("what is 2+2", 20, 0, False, "general") <= 1
    hard = ("Design a distributed, concurrent architecture; analyse the race condition and security "
            "trade-offs and the root cause across the codebase. " * 30)
    assert complexity_score(hard, 60_000, 40, True, "planning") >= 9


def test_last_user_text_skips_tool_result_turns():
    request = {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Explain this function"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "def f(): ..."}]},
    ]}
    f = extract_features(request, body_size=100, client="c", protocol="anthropic", aliases={})
    assert f.task == "explanation"


def routed(text, **kw):
    """Features with the route the keyword fallback gives (what the default plan sees when the
    embedding model is down; the semantic classifier is tested in test_classifier.py)."""
    f = features(text, **kw)
    match = RouteClassifier(CFG).keyword_match(text, "test")
    f.route, f.route_source = match.route, match.source
    return f


def engine(counts=None):
    counts = counts or {}
    return RuleEngine(CFG, lambda rule: counts.get(rule, 0))


def test_default_plan_routes_coding_to_local_coder():
    d = engine().decide(routed("Write a function to merge two sorted lists"))
    assert (d.rule, d.target) == ("coding", "coder")


def test_default_plan_routes_docs_and_explanations_to_general():
    assert engine().decide(routed("Explain the difference between a list and a tuple")).target == "general"


def test_default_plan_sends_pattern_recognition_to_cloud():
    d = engine().decide(routed("Find all similar patterns across the logs"))
    assert (d.rule, d.target) == ("claude-reserved", "claude")


def test_haiku_class_background_requests_go_to_fast_model():
    d = engine().decide(routed("Write a function for this", model="claude-haiku-4-5-20251001"))
    assert (d.rule, d.target) == ("background", "fast")


def test_daily_limit_reached_falls_to_next_matching_rule():
    text = "Find all patterns across the code and write a function that detects them"
    d = engine({"claude-reserved": 400}).decide(routed(text))
    assert d.rule != "claude-reserved" and d.target != "claude"
    assert any("daily_limit reached (400/400)" in t.note for t in d.trace)


def test_override_header_and_unknown_override():
    f = features("Explain this")
    f.override = "coder"
    assert engine().decide(f).rule == "override"
    f.override = "nope"
    d = engine().decide(f)
    assert d.rule != "override" and "unknown target 'nope'" in d.trace[0].note


def test_override_of_a_target_guarded_by_a_daily_limit_counts_against_that_rule():
    # claude-reserved (daily_limit 400) sends to claude: forcing claude is charged to that rule ...
    f = features("Explain this")
    f.override = "claude"
    d = engine({"claude-reserved": 3}).decide(f)
    assert (d.target, d.rule) == ("claude", "claude-reserved") and "3/400" in d.reason
    # ... and once the limit is used up, the override no longer gets around it.
    d = engine({"claude-reserved": 400}).decide(f)
    assert d.target != "claude" and "daily_limit for it is reached (400/400)" in d.trace[0].note


def test_alias_rule_name_is_the_configured_glob_not_the_requested_model():
    d = engine().decide(features("hello there", model="claude-opus-4-5"))
    assert (d.rule, d.target) == ("alias:claude-opus-*", "coder")
    hostile = "claude-opus-\u2603\r\nx-evil: 1" + "A" * 100_000
    d = engine().decide(features("hello there", model=hostile))
    assert d.rule == "alias:claude-opus-*"


def _restricted(targets):
    import msgspec

    cfg = msgspec.structs.replace(CFG, clients=[msgspec.structs.replace(CFG.clients[0], name="t",
                                                                         targets=targets)])
    return RuleEngine(cfg, lambda rule: 0)


def test_client_targets_bind_the_override_and_the_model_name():
    from aibox_router.errors import PermissionDeniedError

    f = features("Explain this")
    f.override = "claude"
    with pytest.raises(PermissionDeniedError, match="may not choose target 'claude'"):
        _restricted(["fast", "general"]).decide(f)


def test_client_targets_skip_rules_aliases_and_default_outside_them():
    f = features("Design the architecture of our event pipeline and weigh its trade-offs")
    f.route, f.route_source = "architecture", "embedding"  # a Claude-reserved route: rule claude-reserved
    d = _restricted(["fast"]).decide(f)
    assert d.target == "fast"
    assert any("may not use target 'claude'" in t.note for t in d.trace)
    d = _restricted(["general", "fast"]).decide(features("hello there", model="claude-opus-4-5"))
    assert (d.target, d.rule) == ("general", "default")  # the alias points at coder: not allowed
    d = _restricted(["fast"]).decide(features("hello there", model="gpt-4o"))
    assert (d.target, d.rule) == ("fast", "default") and "not allowed" in d.reason


def test_default_target_when_nothing_matches():
    d = engine().decide(features("hello there", model="gpt-4o"))
    assert (d.rule, d.target) == ("default", CFG.default_target)


def test_thinking_and_tools_are_features():
    f = features("hi", thinking={"type": "adaptive"}, tools=[{"name": "a", "input_schema": {}}])
    assert f.has_thinking and f.has_tools and f.tool_count == 1


def test_a_rule_failing_at_run_time_does_not_spoil_the_others():
    import yaml

    from aibox_router.config_load import parse_config

    with open(default_config_path()) as f:
        data = yaml.safe_load(f)
    # Valid at load time (the sample request has input_tokens 0), divides by zero when input_tokens is 1.
    data["rules"].insert(0, {"name": "fragile", "when": "max_tokens / (input_tokens - 1) > 2", "target": "claude"})
    cfg = parse_config(data, "router.yml", env={})
    f = extract_features({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "Explain it"}]},
                         body_size=4, client="c", protocol="anthropic", aliases={})
    assert f.input_tokens == 1
    f.route = "explain"
    d = RuleEngine(cfg, lambda rule: 0).decide(f)
    assert d.rule == "docs"
    assert d.trace[0].rule == "fragile" and "ZeroDivisionError" in d.trace[0].note
