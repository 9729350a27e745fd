"""The optional LLM judge for close calls, against Ollama's double on the wire: it is asked only on a
close call, among the best candidates, and its answer, silence or nonsense is handled and reported."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from aiohttp import web

from aibox_router.backends import create_backend
from aibox_router.classifier import RouteMatch
from aibox_router.cli.common import default_config_path
from aibox_router.config import parse_config
from aibox_router.errors import ConfigError
from aibox_router.judge import consult, judge_prompt, pick_route
from tests.doubles.fake_ollama import FakeOllama, Reply


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
    runtime = SimpleNamespace(config=config, backends={"ollama": create_backend("ollama", config.backends["ollama"])})
    try:
        return await consult(runtime, "Lay out how we move the build system to Bazel over two quarters", match)
    finally:
        await runtime.backends["ollama"].aclose()


def test_pick_route_takes_the_first_candidate_named_as_a_word():
    names = ["code", "planning", "cross_codebase"]
    assert pick_route("Planning.", names) == "planning"
    assert pick_route("route: cross_codebase (not code)", names) == "cross_codebase"
    assert pick_route("encode it", names) is None


async def test_a_close_call_is_decided_by_the_judge_among_the_best_candidates():
    with FakeOllama(models=["qwen2.5:1.5b"]) as fake:
        fake.enqueue(Reply(text="planning"))
        match = await consult_with(config_with_judge(fake.url), close_call())
        sent = fake.last_request
    assert match.route == "planning" and match.score == 0.39
    assert match.unjudged_route == "code" and match.judge_ms is not None and match.judge_ms > 0
    assert "chose planning over code" in match.judge and "among code, planning, architecture" in match.judge
    prompt = sent["messages"][-1]["content"]
    assert "- planning: Strategic technical planning" in prompt and "- docs:" not in prompt
    assert "Bazel" in prompt


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
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        match = await consult_with(config_with_judge(f"http://127.0.0.1:{port}", timeout_ms=200), close_call())
        assert loop.time() - started < 2
    finally:
        await runner.cleanup()
    assert match.route == "code" and "no answer within 200 ms; kept code" in match.judge


def test_judge_prompt_lists_descriptions():
    config = config_with_judge("http://127.0.0.1:9")
    prompt = judge_prompt(config, ["code", "planning"], "do the thing")
    assert prompt.startswith("Routes:\n- code: Write, extend or refactor code") and prompt.endswith("Route name:")


def test_the_judge_must_be_a_local_target():
    with pytest.raises(ConfigError, match="routing.judge.target: 'claude' is a cloud target"):
        config_with_judge("http://127.0.0.1:9", target="claude")
