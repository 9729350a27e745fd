"""Hostile and malformed requests against the app in-process: every one a 4xx in the caller's shape.

Property-based (hypothesis): for every field of both protocols that the router reads, a value of a
wrong JSON type must be refused with a 400 that names the field, in that protocol's error shape;
arbitrary JSON bodies must never produce a 5xx. Then the specific findings of the hostile-input
review: deep nesting, client strings in headers/labels/ledger, unknown routes, the catch-all, probe
access, body limits, per-client targets.

Backends: the Anthropic API double and the Ollama double, on loopback.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from aibox_router.config_load import parse_config
from aibox_router.server import create_app
from tests.doubles.fake_ollama import FakeOllama
from tests.support.hostile_cases import (
    ANTHROPIC_BODY,
    ANTHROPIC_FIELDS,
    OPENAI_BODY,
    OPENAI_FIELDS,
    field_name,
    replaced,
    router_config,
)

KEY = "hostile-test-client-key-0123"
LIMITED_KEY = "hostile-limited-client-key-0123"
METRICS_TOKEN = "metrics-token-0123456789abcdef"


def config(anthropic_url: str, ollama_url: str, state_dir: str, **server: Any):
    return parse_config(router_config(
        anthropic_url, ollama_url, cloud_key_env="HOSTILE_KEY",
        server={"state_dir": state_dir, "metrics_token": METRICS_TOKEN, "open_probes_to": [],
                "max_body_bytes": 400_000, **server},
        clients=[{"name": "dev", "key": KEY}, {"name": "intern", "key": LIMITED_KEY, "targets": ["local"]}],
    ), env={"HOSTILE_KEY": "sk-ant-test"})


@pytest.fixture(scope="module")
def ollama():
    with FakeOllama(models=["qwen2.5-coder:7b"]) as fake:
        yield fake


@pytest.fixture(scope="module")
def app_client(fake_anthropic_server, ollama, tmp_path_factory):
    state = tmp_path_factory.mktemp("hostile-state")
    app = create_app(config=config(fake_anthropic_server.url, ollama.url, str(state)))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HOSTILE_KEY", "sk-ant-test")
        with TestClient(app, raise_server_exceptions=False) as client:
            client.state_dir = state
            yield client


A = {"x-api-key": KEY, "content-type": "application/json"}


def post(client: TestClient, path: str, body: Any, headers: dict[str, str] | None = None):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers={**A, **(headers or {})})


def assert_anthropic_error(r, status: int | None = None) -> str:
    assert r.headers["content-type"].startswith("application/json"), r.text
    data = r.json()
    assert data["type"] == "error" and isinstance(data["error"]["type"], str), data
    assert isinstance(data["error"]["message"], str)
    if status is not None:
        assert r.status_code == status, r.text
    return data["error"]["message"]


def assert_openai_error(r, status: int | None = None) -> str:
    assert r.headers["content-type"].startswith("application/json"), r.text
    data = r.json()
    assert set(data) == {"error"} and isinstance(data["error"]["type"], str), data
    assert isinstance(data["error"]["message"], str)
    if status is not None:
        assert r.status_code == status, r.text
    return data["error"]["message"]


_VALUES_BY_KIND = {
    "null": st.none(),
    "boolean": st.booleans(),
    "integer": st.integers(min_value=-2**63, max_value=2**63 - 1),
    "number": st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    "string": st.text(max_size=40),
    "array": st.lists(st.integers() | st.text(max_size=5) | st.none(), max_size=4),
    "object": st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=5), max_size=3),
}


# Fields that take only some strings: those strings are right, not wrong.
VALID_STRINGS = {"role": {"user", "assistant", "system", "developer", "tool"}, "type": {"auto", "any", "tool", "none"}}


def wrong_values(path: tuple, accepted: set[str]) -> st.SearchStrategy[Any]:
    kinds = [k for k in _VALUES_BY_KIND if k not in accepted]  # non-integral floats where only integers go
    valid = VALID_STRINGS.get(path[-1], set()) if not accepted else set()
    return st.one_of(*(_VALUES_BY_KIND[k] for k in kinds)).filter(lambda v: not (isinstance(v, str) and v in valid))


def test_base_requests_are_valid(app_client, ollama):
    r = post(app_client, "/v1/messages", ANTHROPIC_BODY)
    assert r.status_code == 200, r.text
    r = post(app_client, "/v1/chat/completions", OPENAI_BODY)
    assert r.status_code == 200, r.text


def _fields_and_wrong_values(fields: dict[tuple, set[str]]):
    return st.sampled_from(sorted(fields, key=repr)).flatmap(
        lambda path: st.tuples(st.just(path), wrong_values(path, fields[path])))


HYPOTHESIS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYPOTHESIS
@given(case=_fields_and_wrong_values(ANTHROPIC_FIELDS))
def test_anthropic_wrong_type_in_any_field_is_a_400_naming_it(app_client, case):
    path, value = case
    r = post(app_client, "/v1/messages", replaced(ANTHROPIC_BODY, path, value))
    message = assert_anthropic_error(r, 400)
    assert field_name(path) in message or field_name(path[:-1]) in message, (path, value, message)


@HYPOTHESIS
@given(case=_fields_and_wrong_values(OPENAI_FIELDS))
def test_openai_wrong_type_in_any_field_is_a_400_naming_it(app_client, case):
    path, value = case
    r = post(app_client, "/v1/chat/completions", replaced(OPENAI_BODY, path, value))
    message = assert_openai_error(r, 400)
    assert field_name(path) in message or field_name(path[:-1]) in message, (path, value, message)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                max_size=4),
                    max_leaves=20)


def _shaped_like(template: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The template's keys with arbitrary JSON values, some keys dropped, some random ones added."""
    return st.fixed_dictionaries({}, optional={k: JSON | st.just(v) for k, v in template.items()}).flatmap(
        lambda d: st.dictionaries(st.text(max_size=6), JSON, max_size=2).map(lambda extra: {**extra, **d}))


@HYPOTHESIS
@given(body=JSON | _shaped_like(ANTHROPIC_BODY))
def test_anthropic_arbitrary_json_never_a_5xx(app_client, body):
    r = post(app_client, "/v1/messages", body)
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        assert_anthropic_error(r)


@HYPOTHESIS
@given(body=JSON | _shaped_like(OPENAI_BODY))
def test_openai_arbitrary_json_never_a_5xx(app_client, body):
    r = post(app_client, "/v1/chat/completions", body)
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        assert_openai_error(r)


@HYPOTHESIS
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_a_5xx(app_client, raw):
    for path, check in (("/v1/messages", assert_anthropic_error), ("/v1/chat/completions", assert_openai_error)):
        r = post(app_client, path, raw)
        check(r, 400)


# -- the review's findings, one by one ---------------------------------------------------------------

def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [1_000, 5_000, 100_000])
def test_deep_nesting_anywhere_is_a_400(app_client, depth):
    for path, body, check in (("/v1/messages", ANTHROPIC_BODY, assert_anthropic_error),
                              ("/v1/chat/completions", OPENAI_BODY, assert_openai_error)):
        raw = json.dumps({**body, "extra": "DEEP"}).replace('"DEEP"', _nested(depth)).encode()
        assert "nested too deeply" in check(post(app_client, path, raw), 400)


@pytest.mark.parametrize("depth", [64, 400, 900])
def test_free_form_json_the_router_translates_may_not_nest_deeper_than_64(app_client, depth):
    deep = {"a": json.loads(_nested(depth))}
    for path in (("messages", 1, "content", 1, "input"), ("tools", 0, "input_schema")):
        message = assert_anthropic_error(post(app_client, "/v1/messages", replaced(ANTHROPIC_BODY, path, deep)), 400)
        assert field_name(path) in message and "nested deeper than 64" in message
    shallow = replaced(ANTHROPIC_BODY, ("messages", 1, "content", 1, "input"), {"a": json.loads(_nested(20))})
    assert post(app_client, "/v1/messages", shallow).status_code == 200


def test_openai_tool_arguments_nested_100000_levels_is_a_400(app_client):
    body = replaced(OPENAI_BODY, ("messages", 2, "tool_calls", 0, "function", "arguments"),
                    '{"a": ' + _nested(100_000) + "}")
    message = assert_openai_error(post(app_client, "/v1/chat/completions", body), 400)
    assert "function.arguments" in message


@pytest.mark.parametrize("path,value", [
    (("messages", 0, "content", 0, "text"), 5),
    (("messages", 0, "content", 0, "text"), None),
    (("system", 0, "text"), None),
    (("messages", 1, "content", 1, "id"), None),
    (("messages", 1, "content", 1, "name"), ""),
    (("tool_choice",), "auto"),
])
def test_the_reviews_anthropic_500s_are_400s(app_client, path, value):
    assert_anthropic_error(post(app_client, "/v1/messages", replaced(ANTHROPIC_BODY, path, value)), 400)


def test_tool_use_without_id_or_name_is_a_400(app_client):
    for key in ("id", "name"):
        body = json.loads(json.dumps(ANTHROPIC_BODY))
        del body["messages"][1]["content"][1][key]
        message = assert_anthropic_error(post(app_client, "/v1/messages", body), 400)
        assert f"messages[1].content[1].{key}: Field required" in message


@pytest.mark.parametrize("value", [5, "call", {"id": "x"}])
def test_openai_tool_calls_not_a_list_is_a_400(app_client, value):
    body = replaced(OPENAI_BODY, ("messages", 2, "tool_calls"), value)
    assert "tool_calls" in assert_openai_error(post(app_client, "/v1/chat/completions", body), 400)


def test_unbounded_model_name_is_refused_before_it_goes_anywhere(app_client):
    body = replaced(ANTHROPIC_BODY, ("model",), "claude-opus-" + "A" * 100_000)
    message = assert_anthropic_error(post(app_client, "/v1/messages", body), 400)
    assert len(message) < 200


@pytest.mark.parametrize("model", ["claude-opus-\u2603", "claude-opus-4\r\nx-injected: 1", "claude-opus-\x00"])
def test_hostile_model_name_never_reaches_a_header_label_or_ledger_column(app_client, fake_anthropic, model):
    body = {**replaced(ANTHROPIC_BODY, ("model",), model), "stream": True}
    body.pop("thinking")
    with app_client.stream("POST", "/v1/messages", content=json.dumps(body).encode(), headers=A) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    assert "message_stop" in text
    assert r.headers["x-aibox-rule"] == "alias:claude-opus-*" and "x-injected" not in r.headers
    assert len(fake_anthropic.requests) == 1
    metrics = app_client.get("/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}).text
    assert model not in metrics and "\u2603" not in metrics
    ledger = sqlite3.connect(app_client.state_dir / "ledger.sqlite3")
    rows = ledger.execute("SELECT client, rule, target, backend, model, error FROM requests").fetchall()
    assert rows and all(model not in str(v) for row in rows for v in row)


def test_unknown_route_and_wrong_method_in_the_protocols_shape(app_client):
    assert_anthropic_error(app_client.get("/v1/nothing-here", headers=A), 404)
    assert_anthropic_error(app_client.get("/v1/messages", headers=A), 405)
    assert_openai_error(app_client.get("/v1/chat/completions", headers=A), 405)
    assert_openai_error(app_client.post("/v1/models", headers=A), 405)


def test_unexpected_error_is_a_500_in_shape_with_a_request_id_in_the_log(app_client, monkeypatch, caplog):
    from aibox_router import pipeline

    async def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(pipeline, "complete", broken)
    with caplog.at_level(logging.ERROR, logger="aibox_router.server"):
        r = post(app_client, "/v1/chat/completions", OPENAI_BODY)
    message = assert_openai_error(r, 500)
    request_id = r.headers["x-aibox-request-id"]
    assert request_id in message and "a bug" not in message
    assert any(request_id in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_probes_need_a_key_or_the_metrics_token(app_client):
    for path in ("/ready", "/metrics"):
        assert_anthropic_error(app_client.get(path), 401)
        assert app_client.get(path, headers={"authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200
        assert app_client.get(path, headers={"x-api-key": KEY}).status_code == 200
        assert_anthropic_error(app_client.get(path, headers={"authorization": "Bearer wrong-token-00000000"}), 401)


def test_ready_shows_no_internals_and_probes_at_most_once_per_cache_period(app_client, fake_anthropic):
    app_client.app.state.router._ready = None
    before = sum(1 for r in fake_anthropic.requests if r.path == "/v1/models")
    answers = [app_client.get("/ready", headers={"x-api-key": KEY}) for _ in range(5)]
    probes = sum(1 for r in fake_anthropic.requests if r.path == "/v1/models") - before
    assert probes == 1
    text = answers[0].text
    assert answers[0].json() == {"status": "ready", "backends": {"cloud": {"reachable": True},
                                                                 "ollama": {"reachable": True}}}
    assert "127.0.0.1" not in text and "anthropic" not in text and "yml" not in text


def test_probes_open_to_listed_addresses(fake_anthropic_server, ollama, tmp_path):
    app = create_app(config=config(fake_anthropic_server.url, ollama.url, str(tmp_path),
                                   open_probes_to=["10.9.0.0/16"]))
    with TestClient(app, client=("10.9.1.2", 5000)) as inside:
        assert inside.get("/metrics").status_code == 200
    with TestClient(app, client=("10.8.1.2", 5000)) as outside:
        assert_anthropic_error(outside.get("/metrics"), 401)


def test_announced_oversize_body_is_a_413_before_reading(app_client):
    r = app_client.post("/v1/messages", content=b"{}", headers={**A, "content-length": "40000000"})
    assert_anthropic_error(r, 413)
    assert r.headers["connection"] == "close"


def test_chunked_oversize_body_is_a_413(app_client):
    def chunks():
        for _ in range(100):
            yield b" " * 50_000

    r = app_client.post("/v1/chat/completions", content=chunks(), headers=A)
    assert "server.max_body_bytes" in assert_openai_error(r, 413)


def test_client_targets_bind_the_override_and_model_name(app_client, fake_anthropic):
    limited = {"x-api-key": LIMITED_KEY}
    r = post(app_client, "/v1/messages", ANTHROPIC_BODY, {**limited, "x-aibox-target": "claude"})
    assert "may not choose target 'claude'" in assert_anthropic_error(r, 403)
    r = post(app_client, "/v1/chat/completions", {**OPENAI_BODY, "model": "claude"}, limited)
    assert_openai_error(r, 403)
    # an alias to the cloud is not taken either: the request goes to the client's own target
    r = post(app_client, "/v1/messages", {**ANTHROPIC_BODY, "model": "claude-opus-4"}, limited)
    assert r.status_code == 200 and r.headers["x-aibox-target"] == "local"
    assert not fake_anthropic.requests
    models = app_client.get("/v1/models", headers=limited).json()["data"]
    assert {m["id"] for m in models} == {"local", "qwen2.5-coder:7b"}


def test_image_urls_do_not_reach_openai_compatible_backends():
    from aibox_router.config import TargetConfig
    from aibox_router.wire.chat_common import URL_IMAGE_NOTE
    from aibox_router.wire.openai_chat import to_openai_request

    request = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "url", "url": "http://10.0.0.5/admin"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}]}]}
    target = TargetConfig(backend="b", model="m")
    sent = json.dumps(to_openai_request(request, target, stream=False))
    assert "10.0.0.5" not in sent and URL_IMAGE_NOTE in sent and "data:image/png;base64,iVBOR" in sent
    allowed = json.dumps(to_openai_request(request, target, stream=False, allow_image_urls=True))
    assert "http://10.0.0.5/admin" in allowed


async def test_requests_past_max_concurrent_get_503_in_the_callers_shape():
    import asyncio

    from aibox_router.http_guard import RequestGuard
    from aibox_router.server import render_for_path

    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = RequestGuard(slow_app, max_concurrent=lambda: 2, render_for_path=render_for_path)

    async def call(path):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await guard({"type": "http", "method": "POST", "path": path, "headers": []}, receive, send)
        return sent

    held = [asyncio.create_task(call("/v1/messages")) for _ in range(2)]
    await asyncio.sleep(0.01)
    refused = await call("/v1/chat/completions")
    assert refused[0]["status"] == 503 and (b"retry-after", b"1") in refused[0]["headers"]
    assert json.loads(refused[1]["body"])["error"]["type"] == "server_overloaded"
    refused = await call("/v1/messages")
    assert json.loads(refused[1]["body"])["error"]["type"] == "overloaded_error"
    release.set()
    for task in held:
        assert (await task)[0]["status"] == 200
    assert guard.active == 0 and (await call("/v1/messages"))[0]["status"] == 200


def test_an_error_no_endpoint_catches_is_a_500_in_shape_with_its_request_id(app_client, monkeypatch, caplog):
    from aibox_router import server

    def broken(*args, **kwargs):
        raise RuntimeError("models listing bug")

    monkeypatch.setattr(server.OPENAI, "models_body", broken)
    with caplog.at_level(logging.ERROR, logger="aibox_router.server"):
        r = app_client.get("/v1/models", headers=A)
    message = assert_openai_error(r, 500)
    request_id = r.headers["x-aibox-request-id"]
    assert request_id in message and "models listing bug" not in message
    assert any(request_id in rec.getMessage() for rec in caplog.records)


def test_hardening_keys_are_checked_with_their_paths(tmp_path):
    from aibox_router.errors import ConfigError

    base = {"backends": {"o": {"type": "ollama", "base_url": "http://127.0.0.1:1"}},
            "targets": {"local": {"backend": "o", "model": "m"}}, "default_target": "local"}
    cases = [
        ({"server": {"header_timeout_s": 0}}, "server.header_timeout_s: expected a number > 0, found 0"),
        ({"server": {"open_probes_to": ["10.0.0.0/33"]}}, "server.open_probes_to[0]: '10.0.0.0/33' is not"),
        ({"server": {"metrics_token": "short"}}, "server.metrics_token: shorter than 16 characters"),
        ({"clients": [{"name": "a", "key": "k" * 16, "targets": ["cloud"]}]},
         "clients[0].targets[0]: unknown target 'cloud'"),
        ({"clients": [{"name": "a", "key": "k" * 16, "targets": []}]}, "clients[0].targets: empty list"),
    ]
    for extra, expected in cases:
        with pytest.raises(ConfigError, match=re.escape(expected)):
            parse_config({**base, **extra}, source="router.yml", env={})
    cfg = parse_config(base, env={})
    assert cfg.server.open_probes_to == ["127.0.0.0/8", "::1"] and cfg.server.metrics_token is None
    assert cfg.client_targets("anyone") is None


def reservation_gauges(client: TestClient) -> tuple[float, float]:
    """(reserved USD, cloud calls in flight) of this app's cost control (the /metrics gauges follow
    whichever app registered last; other tests of this module start apps of their own)."""
    snap = client.app.state.router.runtime.accounting.snapshot()
    return float(snap.reserved_usd), float(snap.in_flight)


@pytest.mark.parametrize("stream", [False, True])
def test_a_failure_after_the_cloud_answered_still_frees_the_reservation(app_client, monkeypatch, stream):
    """A bug in the router's own book-keeping after the upstream answered (here: noting the backend
    healthy) is a 500, and the call is still settled: its reservation must not hold budget until a restart."""
    from aibox_router.backend_health import BackendHealth

    def broken(self, backend):
        raise ValueError("a bug")

    assert reservation_gauges(app_client) == (0.0, 0.0)
    monkeypatch.setattr(BackendHealth, "call_succeeded", broken)
    r = post(app_client, "/v1/messages", {"model": "claude-opus-4", "max_tokens": 20, "stream": stream,
                                          "messages": [{"role": "user", "content": "hi"}]})
    assert_anthropic_error(r, 500)
    assert reservation_gauges(app_client) == (0.0, 0.0)
