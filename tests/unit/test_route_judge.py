"""The optional LLM judge for close calls, against Ollama's double on the wire: it is asked only on a
close call, among the best candidates, and its answer, silence or nonsense is handled and reported."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from aiohttp import web

from aibox_router.backends import create_backend
from aibox_router.classifier import RouteMatch
from aibox_router.cli.common import default_config_path
from aibox_router.config_load import parse_config
from aibox_router.errors import ConfigError
from aibox_router.judge import answer_schema, consult, judge_prompt, judge_request, pick_route
from aibox_router.wire.ollama import to_ollama_request
from aibox_router.wire.openai_chat import to_openai_request
from tests.doubles.fake_ollama import FakeOllama, Reply
from tests.support.loopback_app import serve_on_loopback


def config_with_judge(ollama_url: str, **judge):
    data = yaml.safe_load(Path(default_config_path()).read_text())
    data["backends"]["ollama"]["base_url"] = ollama_url
    data["targets"]["judge"] = {"backend": "ollama", "model": "qwen2.5:1.5b"}
    data["routing"]["judge"] = {"target": "judge", **judge}
    return parse_config(data, "router.yml", env={})


def close_call(margin: float = 0.01) -> RouteMatch:
    return RouteMatch(route="code", score=0.40, margin=margin, source="embedding",
                      scores={"code": 0.40, "planning": 0.39, "architecture": 0.35, "docs": 0.2})


async def consult_with(config, match: RouteMatch) -> RouteMatch:
    backend = create_backend("ollama", config.backends["ollama"])
    runtime = SimpleNamespace(config=config, backends={"ollama": backend})
    try:
        return await consult(runtime, "Lay out how we move the build system to Bazel over two quarters",
                             match)
    finally:
        await runtime.backends["ollama"].aclose()


def test_pick_route_reads_the_route_of_a_json_answer():
    names = ["code", "planning", "cross_codebase"]
    assert pick_route('{"route": "cross_codebase"}', names) == "cross_codebase"
    assert pick_route('{ "route" : "planning" }', names) == "planning"
    # A JSON answer naming no candidate falls back to the words in it, and names none here.
    assert pick_route('{"route": "databases"}', names) is None
    # A route a schema-ignoring server merely mentions inside other JSON still counts as named.
    assert pick_route('{"answer": "planning"}', names) == "planning"


def test_pick_route_takes_the_first_candidate_named_as_a_word():
    names = ["code", "planning", "cross_codebase"]
    assert pick_route("Planning.", names) == "planning"
    assert pick_route("route: cross_codebase (not code)", names) == "cross_codebase"
    assert pick_route("encode it", names) is None


async def test_a_close_call_is_decided_by_the_judge_among_the_best_candidates():
    with FakeOllama(models=["qwen2.5:1.5b"]) as fake:
        fake.enqueue(Reply(text='{"route": "planning"}'))
        match = await consult_with(config_with_judge(fake.url), close_call())
        sent = fake.last_request
    assert match.route == "planning" and match.score == 0.39
    assert match.unjudged_route == "code" and match.judge_ms is not None and match.judge_ms > 0
    assert "chose planning over code" in match.judge and "among code, planning, architecture" in match.judge
    prompt = sent["messages"][-1]["content"]
    assert "- planning: Strategic technical planning" in prompt and "- docs:" not in prompt
    assert "Bazel" in prompt
    # Ollama's structured outputs: the schema itself in "format", its enum the candidates, few tokens.
    assert sent["format"] == answer_schema(["code", "planning", "architecture"])
    assert sent["format"]["properties"]["route"]["enum"] == ["code", "planning", "architecture"]
    assert sent["options"]["num_predict"] == 24 and sent["options"]["temperature"] == 0


async def test_a_judge_that_ignores_the_schema_is_still_read_from_its_words():
    with FakeOllama(models=["qwen2.5:1.5b"]) as fake:
        fake.enqueue(Reply(text="The best route is architecture."))
        match = await consult_with(config_with_judge(fake.url), close_call())
    assert match.route == "architecture" and "chose architecture over code" in match.judge


def test_an_openai_compatible_judge_gets_the_schema_as_response_format():
    config = config_with_judge("http://127.0.0.1:9")
    names = ["code", "planning"]
    request = judge_request(config, "smollm2", names, "do the thing")
    body = to_openai_request(request, config.targets["judge"], stream=False)
    # OpenAI's structured outputs shape, which llama.cpp's server and vLLM turn into a grammar.
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": answer_schema(names)}}
    assert body["max_tokens"] == 24 and body["temperature"] == 0
    assert answer_schema(names) == {"type": "object",
                                    "properties": {"route": {"type": "string", "enum": names}},
                                    "required": ["route"], "additionalProperties": False}


def test_requests_without_an_output_format_send_no_constraint():
    config = config_with_judge("http://127.0.0.1:9")
    plain = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    target = config.targets["judge"]
    assert "response_format" not in to_openai_request(plain, target, stream=False)
    assert "format" not in to_ollama_request(plain, target, stream=False)
    not_a_schema = {**plain, "output_format": {"type": "json_schema", "schema": "route"}}
    assert "response_format" not in to_openai_request(not_a_schema, target, stream=False)
    assert "format" not in to_ollama_request(not_a_schema, target, stream=False)


async def test_a_clear_margin_or_a_keyword_match_never_asks_the_judge():
    with FakeOllama(models=["qwen2.5:1.5b"]) as fake:
        config = config_with_judge(fake.url, margin_below=0.05)
        clear = await consult_with(config, close_call(margin=0.2))
        keyword = await consult_with(config, RouteMatch(route="code", source="keyword"))
        assert not fake.requests
    assert clear.judge == keyword.judge == "not asked" and clear.route == "code"


async def test_a_useless_answer_keeps_the_classifiers_route():
    with FakeOllama(models=["qwen2.5:1.5b"]) as fake:
        fake.enqueue(Reply(text="I think this is about databases"))
        match = await consult_with(config_with_judge(fake.url), close_call())
    assert match.route == "code" and "names no candidate; kept code" in match.judge
    assert match.unjudged_route == "code"


async def test_a_silent_judge_is_cut_off_at_its_timeout():
    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/api/chat", hang)
    runner, url = await serve_on_loopback(app)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        config = config_with_judge(url, timeout_ms=200)
        match = await consult_with(config, close_call())
        assert loop.time() - started < 2
    finally:
        await runner.cleanup()
    assert match.route == "code" and "no answer within 200 ms; kept code" in match.judge


def test_judge_prompt_lists_descriptions():
    config = config_with_judge("http://127.0.0.1:9")
    prompt = judge_prompt(config, ["code", "planning"], "do the thing")
    assert prompt.startswith("Routes:\n- code: Write, extend or refactor code")
    assert prompt.endswith("Route name:")


def test_the_judge_must_be_a_local_target():
    with pytest.raises(ConfigError, match="routing.judge.target: 'claude' is a cloud target"):
        config_with_judge("http://127.0.0.1:9", target="claude")


async def start_llama_cpp_python_like_server(seen: list[dict]) -> tuple[web.AppRunner, str]:
    """Stands in for llama-cpp-python's OpenAI-compatible server (the live tests' SmolLM2 server) on
    the one point tested here: it answers OpenAI's ``json_schema`` response_format with its HTTP 500
    validation error, and takes ``{"type": "json_object", "schema": ...}``, answering in that schema."""

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        if body["response_format"]["type"] != "json_object":
            return web.json_response({"error": {
                "message": "1 validation error: ('body', 'response_format', 'type') Input should be 'text' "
                           "or 'json_object'", "type": "internal_server_error", "param": None, "code": None}},
                status=500)
        route = body["response_format"]["schema"]["properties"]["route"]["enum"][1]
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0,
                         "message": {"role": "assistant", "content": json.dumps({"route": route})},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 7, "total_tokens": 127}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner, url = await serve_on_loopback(app)
    return runner, f"{url}/v1"


async def test_a_server_refusing_the_json_schema_shape_is_asked_with_its_json_object_schema():
    seen: list[dict] = []
    runner, url = await start_llama_cpp_python_like_server(seen)
    try:
        data = yaml.safe_load(Path(default_config_path()).read_text())
        data["backends"]["llama"] = {"type": "openai", "base_url": url}
        data["targets"]["judge"] = {"backend": "llama", "model": "smollm2"}
        data["routing"]["judge"] = {"target": "judge"}
        config = parse_config(data, "router.yml", env={})
        backend = create_backend("llama", config.backends["llama"])
        runtime = SimpleNamespace(config=config, backends={"llama": backend})
        try:
            match = await consult(runtime, "Lay out how we move the build system to Bazel", close_call())
        finally:
            await backend.aclose()
    finally:
        await runner.cleanup()
    schema = answer_schema(["code", "planning", "architecture"])
    assert [body["response_format"] for body in seen] == [
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
        {"type": "json_object", "schema": schema}]
    assert match.route == "planning" and "chose planning over code" in match.judge
