"""Route policies without a model: the user-turn text, config checks, the turn cache, the route
feature in rules, the eval figures and the ledger's route columns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from aibox_router.accounting import RequestRecord
from aibox_router.classifier import RouteMatch, clean_turn_text, user_turn_text
from aibox_router.cli.common import default_config_path
from aibox_router.config_load import parse_config
from aibox_router.cost import LedgerRow, SqliteLedger
from aibox_router.errors import ConfigError
from aibox_router.features import Features
from aibox_router.route_eval import EvalItem, EvalReport, EvalResult, load_items, wrap_in
from aibox_router.route_lexical import LexicalScorer, words
from aibox_router.rules import RouteDecision, RuleEngine
from aibox_router.turns import TurnCache, turn_key

ROOT = Path(__file__).resolve().parents[2]
TURN = [json.loads((ROOT / f"tests/fixtures/claude_code/turn-0{i}.json").read_text()) for i in (1, 2, 3)]
PROMPT = "Why does reserve() in orders/service.py sometimes oversell under concurrent requests?"


def default_data() -> dict:
    return yaml.safe_load(Path(default_config_path()).read_text())


# -- the text that is classified ------------------------------------------------------------------

def test_every_request_of_the_recorded_claude_code_turn_yields_the_users_words():
    assert [user_turn_text(body) for body in TURN] == [PROMPT] * 3


def test_reminders_command_output_and_pasted_blocks_are_cut():
    pasted = "\n".join(f"line {i} of the log" for i in range(200))
    text = ("<system-reminder>\nCLAUDE.md says use tabs\n</system-reminder>\nWhy does this crash?\n"
            f"```\n{pasted}\n```\n<local-command-stdout>ok</local-command-stdout>Please find the cause")
    cleaned = clean_turn_text(text)
    assert "CLAUDE.md" not in cleaned and "local-command" not in cleaned
    assert "line 3 of the log" in cleaned and "line 4 of the log" not in cleaned and "[... 196 pasted lines]" in cleaned
    assert cleaned.startswith("Why does this crash?") and cleaned.endswith("Please find the cause")


def test_unfenced_pasted_logs_and_code_are_cut_and_prose_and_lists_stay():
    log = "\n".join(f"2026-11-30 02:{i:02d}:11 ERROR worker-{i} lost connection to broker" for i in range(40))
    cleaned = clean_turn_text(f"The worker dies every night, here is the log:\n{log}\nwhat is going on?")
    assert "worker-3 lost" in cleaned and "worker-4 lost" not in cleaned
    assert "[... 36 pasted lines]" in cleaned
    assert cleaned.startswith("The worker dies") and cleaned.endswith("what is going on?")
    code = ("def total(items):\n    result = 0\n    for item in items:\n"
            "        result += item.price * item.quantity\n    return result\n\n"
            "import os\ndef load(path):\n    with open(path) as f:\n        return f.read()")
    cleaned = clean_turn_text(f"Add type hints to this:\n{code}\nand keep it short")
    assert "def load" not in cleaned and "[... 6 pasted lines]" in cleaned
    assert cleaned.endswith("keep it short")
    plan = "Plan the migration:\n" + "\n".join(f"- move the {t} table, then check it" for t in "abcdefgh")
    assert clean_turn_text(plan) == plan
    short = 'Why does this fail?\nTraceback (most recent call last):\n  File "a.py", line 1\nKeyError: 1'
    assert clean_turn_text(short) == short  # a short trace is the user's evidence: kept whole


def test_a_long_turn_keeps_both_ends():
    text = "Design the storage layer. " + "filler words " * 500 + "Compare the trade-offs."
    cleaned = clean_turn_text(text)
    assert len(cleaned) < 1300 and cleaned.startswith("Design the storage") and cleaned.endswith("trade-offs.")


def test_tool_result_turns_are_skipped_and_string_content_is_read():
    request = {"messages": [
        {"role": "user", "content": "Plan the migration"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "def f(): ..."},
                                     {"type": "text", "text": "<system-reminder>todo list</system-reminder>"}]},
    ]}
    assert user_turn_text(request) == "Plan the migration"


def test_the_lexical_score_weighs_the_words_a_routes_examples_share():
    scorer = LexicalScorer({"plan": ["Plan the migration of the database", "Plan the rollout in phases"],
                            "fix": ["Fix the KeyError in the database loader", "Fix the failing test"]})
    plan, fix = scorer.scores("plan how we migrate the database in phases")
    assert plan > fix > 0  # "database" is in both routes, "plan" and "phases" only in one
    assert scorer.scores("bake bread") == [0.0, 0.0]
    assert words("Planning the plans we planned") == ["plan", "plan", "plan"]


def test_the_first_words_of_a_turn_weigh_more_because_they_name_the_kind_of_work():
    scorer = LexicalScorer({"design": ["Design the schema", "Design a queue"],
                            "fix": ["Fix the schema", "Fix a queue"]})
    # The same words, the two route words swapped: the one said first wins.
    design, fix = scorer.scores("design the new schema, then fix")
    assert design > fix > 0
    design, fix = scorer.scores("fix the new schema, then design")
    assert fix > design > 0


def test_a_description_joins_its_routes_words_as_often_as_description_weight_says():
    examples = {"plan": ["Plan the rollout in phases"], "fix": ["Fix the failing test"]}
    descriptions = {"plan": "Strategic planning: roadmaps and migrations", "fix": "Fixing a bug"}
    assert LexicalScorer(examples).scores("write a roadmap") == [0.0, 0.0]  # "roadmap" is in no example
    plan, fix = LexicalScorer(examples, descriptions, description_weight=3).scores("write a roadmap")
    assert plan > 0 and fix == 0
    assert LexicalScorer(examples, descriptions, description_weight=0).scores("write a roadmap") == [0.0, 0.0]


# -- config checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("change,message", [
    (lambda d: d["routes"][0].update(examples=["one", "two"]),
     "routes[0].examples: route 'code' has 2 example prompts; expected 10 to 30"),
    (lambda d: d["routes"][1].update(name="code"), "routes[1].name: duplicate route name 'code'"),
    (lambda d: d["routes"][0].update(name="Code Gen"), "routes[0].name: 'Code Gen' is not a usable route name"),
    (lambda d: d["routes"][0].update(target="nowhere"), "routes[0].target: unknown target 'nowhere'"),
    (lambda d: d["routes"][0].update(keyword_tasks=["coding"]), "routes[0].keyword_tasks[0]: unknown task 'coding'"),
    (lambda d: d["routing"]["embeddings"].update(backend="cloud"),
     "routing.embeddings.backend: backend 'cloud' is of type 'anthropic', which serves no embeddings"),
    (lambda d: d["routing"]["embeddings"].update(backend="gpu-box"), "routing.embeddings.backend: unknown backend"),
    (lambda d: d["routing"]["embeddings"].update(timeout_ms=5), "routing.embeddings.timeout_ms: expected 10 to 60000"),
    (lambda d: d["routing"].update(lexical_weight=5), "routing.lexical_weight: expected 0 to 2"),
    (lambda d: d["routing"].update(description_weight=11), "routing.description_weight: expected 0 to 10"),
    (lambda d: d["routes"][1]["examples"].append(d["routes"][0]["examples"][0]),
     "is given for both 'code' and 'debug'"),
])
def test_route_config_errors_name_the_key(change, message):
    data = default_data()
    change(data)
    with pytest.raises(ConfigError) as e:
        parse_config(data, "router.yml", env={})
    assert message in str(e.value) and "router.yml" in str(e.value)


def test_default_config_ships_local_first_and_claude_reserved_routes():
    cfg = parse_config(default_data(), "router.yml", env={})
    names = {r.name for r in cfg.routes}
    assert {"code", "debug", "docs", "explain", "chores"} <= names
    assert {"architecture", "troubleshooting", "planning", "cross_codebase"} <= names
    assert all(10 <= len(r.examples) <= 30 and r.description for r in cfg.routes)
    assert cfg.routing.embeddings is not None and cfg.routing.embeddings.model == "all-minilm"


def test_eval_set_is_separate_from_the_route_examples_and_covers_every_route():
    cfg = parse_config(default_data(), "router.yml", env={})
    items = load_items(ROOT / "tests/fixtures/routing/eval-prompts.jsonl")
    examples = {e.strip().lower() for r in cfg.routes for e in r.examples}
    assert len(items) >= 200
    assert not [i.prompt for i in items if i.prompt.strip().lower() in examples]
    assert {i.want for i in items} == {r.name for r in cfg.routes}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9_]+", text.lower()))


def _overlap(a: str, b: str) -> float:
    x, y = _words(a), _words(b)
    return len(x & y) / len(x | y)


def test_held_out_set_covers_every_route_and_repeats_neither_the_first_set_nor_the_examples():
    cfg = parse_config(default_data(), "router.yml", env={})
    held_out = load_items(ROOT / "tests/fixtures/routing/heldout-prompts.jsonl")
    others = [i.prompt for i in load_items(ROOT / "tests/fixtures/routing/eval-prompts.jsonl")]
    others += [e for r in cfg.routes for e in r.examples]
    assert len(held_out) >= 60
    assert {i.want for i in held_out} == {r.name for r in cfg.routes}
    # A prompt sharing 70% of its words with one of the others is a copy, not a held-out prompt.
    copies = [(i.prompt, o) for i in held_out for o in others if _overlap(i.prompt, o) >= 0.7]
    assert not copies
    # ...and the measure does catch a near copy:
    assert _overlap("Delete the stale feature branches that are merged",
                    "delete the stale branches that are merged") >= 0.7


# -- rules read the route ------------------------------------------------------------------------------

def test_route_features_in_rules_and_a_routes_own_target():
    data = default_data()
    data["rules"] = [{"name": "close-call", "when": 'route == "planning" and route_margin < 0.05', "target": "claude"}]
    data["routes"][0]["target"] = "fast"  # code
    engine = RuleEngine(parse_config(data, "router.yml", env={}), lambda rule: 0)
    close = Features(model="m", route="planning", route_score=0.5, route_margin=0.01, route_source="embedding")
    assert engine.decide(close).rule == "close-call"
    clear = Features(model="m", route="planning", route_margin=0.2)
    assert engine.decide(clear).rule == "default"
    coding = engine.decide(Features(model="m", route="code"))
    assert (coding.rule, coding.target) == ("route:code", "fast")


# -- the turn cache ---------------------------------------------------------------------------------

def test_turn_cache_reuses_forgets_after_ttl_and_evicts_the_oldest():
    now = [0.0]
    cache = TurnCache(size=2, ttl_s=60, clock=lambda: now[0])
    a, b, c = (turn_key("dev", "opus", t) for t in ("first", "second", "third"))
    decision = RouteDecision("claude", "claude-reserved", "why")
    cache.put(a, RouteMatch(route="planning"), decision)
    cache.put(b, RouteMatch(route="code"), decision)
    assert cache.get(a).match.route == "planning"  # a is now the most recent
    cache.put(c, RouteMatch(route="docs"), decision)
    assert cache.get(b) is None and cache.get(a) is not None
    now[0] = 61
    assert cache.get(a) is None and len(cache) == 1
    assert turn_key("dev", "opus", "x") != turn_key("ops", "opus", "x") != turn_key("dev", "haiku", "x")


# -- eval figures -------------------------------------------------------------------------------------

def _result(want: str, route: str, cloud: bool, want_cloud: bool) -> EvalResult:
    agrees = (cloud == want_cloud) if want in ("local", "cloud") else route == want
    return EvalResult(EvalItem("p", want), route, "embedding", "claude" if cloud else "coder", cloud, want_cloud,
                      agrees, 0.5, 0.1, 10.0, 0.01)


def test_eval_summary_figures():
    report = EvalReport(routes=["code", "planning"], results=[
        _result("code", "code", False, False), _result("code", "planning", True, False),
        _result("planning", "planning", True, True), _result("cloud", "code", False, True)])
    s = report.summary()
    assert s["agreement"] == 0.5 and s["locality_agreement"] == 0.5
    assert s["per_route"]["code"] == {"support": 2, "precision": 1.0, "recall": 0.5}
    assert s["per_route"]["planning"] == {"support": 1, "precision": 0.5, "recall": 1.0}
    assert s["cloud_recall"] == 0.5 and s["local_kept"] == 0.5 and s["local_share"] == 0.5
    assert s["confusion"]["code"] == {"code": 1, "planning": 1}


def test_wrap_puts_the_prompt_where_the_users_words_are():
    body = wrap_in(TURN[0])("Plan the upgrade of the message broker")
    assert user_turn_text(body) == "Plan the upgrade of the message broker"
    assert body["tools"] == TURN[0]["tools"] and user_turn_text(TURN[0]) == PROMPT  # template untouched


# -- the ledger keeps the route -------------------------------------------------------------------------

def test_ledger_stores_route_and_its_source(tmp_path):
    store = SqliteLedger(tmp_path / "l.sqlite3")
    record = RequestRecord(ts=0, client="c", rule="claude-reserved", target="claude", backend="cloud",
                           model="m", protocol="anthropic", stream=True, cloud=True, route="architecture",
                           route_source="keyword")
    store.insert(LedgerRow.from_record(record, day="2026-12-01", cost_usd=record.cost_usd))
    (row,) = store.rows("2026-12-01", "2026-12-01")
    assert (row.route, row.route_source) == ("architecture", "keyword")
    store.close()
