"""Context windows: where each target's window comes from, the estimate, and the routing around it."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from aibox_router import pipeline
from aibox_router.backends import create_backend
from aibox_router.config_load import parse_config
from aibox_router.context import (
    OLLAMA_ASSUMED_DEFAULT,
    ByteClasses,
    ContextWindows,
    config_warnings,
    estimate_input_tokens,
    prompt_parts,
    read_server_window,
    static_window,
)
from aibox_router.cost import SqliteLedger
from aibox_router.errors import ConfigError, PromptTooLongError, StreamLimitError
from aibox_router.runtime import Runtime
from aibox_router.wire import anthropic as anthropic_api
from aibox_router.wire import openai_chat as openai_api
from tests.doubles.fake_window_servers import FakeWindowServer

CC_FIXTURE = Path(__file__).parents[1] / "fixtures" / "claude_code_request.json"


def config(tmp_path: Path | None = None, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"state_dir": str(tmp_path or "/nonexistent")},
        "backends": {"cloud": {"type": "anthropic", "base_url": "http://127.0.0.1:9"},
                     "ollama": {"type": "ollama", "base_url": "http://127.0.0.1:9"},
                     "llama": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "targets": {
            "claude": {"backend": "cloud", "model": "claude-sonnet-4-5"},
            "coder": {"backend": "ollama", "model": "qwen2.5-coder:14b", "num_ctx": 8192,
                      "max_output_tokens": 1024, "fallback": ["small", "claude"]},
            "small": {"backend": "llama", "model": "smollm2", "context_window": 2048, "max_output_tokens": 256,
                      "fallback": ["coder"]},
            "bare": {"backend": "ollama", "model": "mistral:7b"},
            "unknown": {"backend": "llama", "model": "x", "max_output_tokens": 256},
        },
        "aliases": {"claude-haiku-*": "small"},
        "rules": [{"name": "big-to-coder", "when": "not fits_local", "target": "claude"},
                  {"name": "coding", "when": 'task == "code_generation"', "target": "coder"}],
        "default_target": "small",
        "prices": [{"prefix": "claude-", "input": 3.0, "output": 15.0}],
        "gpu": {"enabled": False},
    }
    data.update(over)
    return data


def request(chars: int, max_tokens: int = 512, model: str = "claude-sonnet-4-5", text: str = "") -> dict[str, Any]:
    line = "def handler(event, context):\n    return {'status': 200, 'body': json.dumps(event)}\n"
    filler = line * (chars // 80 + 1)
    return {"model": model, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": (text + filler)[:chars]}]}


class _Dry:
    """A runtime for planning only (as route explain uses)."""

    def __init__(self, cfg):
        from aibox_router.rules import RuleEngine

        self.config = cfg
        self.rules = RuleEngine(cfg, lambda rule: 0)
        self.gpu = None


def plan(cfg, req, override=None):
    return pipeline.plan_request(_Dry(cfg), req, client="t", protocol="anthropic", body_size=len(json.dumps(req)),
                                 override=override)


# --- windows -----------------------------------------------------------------------------------


def test_each_target_knows_where_its_window_comes_from():
    cfg = parse_config(config(), env={})
    assert static_window(cfg, "coder").tokens == 8192 and "num_ctx" in static_window(cfg, "coder").source
    assert static_window(cfg, "small").tokens == 2048 and "context_window" in static_window(cfg, "small").source
    assert static_window(cfg, "claude").tokens == 200_000 and static_window(cfg, "claude").enforced_upstream
    assert static_window(cfg, "bare").tokens == OLLAMA_ASSUMED_DEFAULT
    assert static_window(cfg, "unknown").tokens is None


def test_config_check_warns_about_local_targets_without_a_window():
    warnings = "\n".join(config_warnings(parse_config(config(), env={})))
    assert "targets.unknown: local target has no context window" in warnings
    assert "targets.bare: Ollama target without num_ctx" in warnings
    assert "targets.claude" not in warnings  # cloud windows are published


@pytest.mark.parametrize("target,error", [
    ({"context_window": 100}, "targets.t.context_window: 100 is too small"),
    ({"context_window": 4096, "max_output_tokens": 4096}, "targets.t.max_output_tokens: 4096 leaves no room"),
    ({"stream_time_limit_s": 0}, "targets.t.stream_time_limit_s: expected a number of seconds > 0"),
])
def test_bad_window_settings_are_config_errors(target, error):
    data = config()
    data["targets"]["t"] = {"backend": "llama", "model": "m", **target}
    with pytest.raises(ConfigError, match=error.replace("(", r"\(")):
        parse_config(data, env={})


def test_safety_margin_is_checked():
    with pytest.raises(ConfigError, match="context.safety_margin_fraction"):
        parse_config(config(context={"safety_margin_fraction": 0.7}), env={})


@pytest.mark.parametrize("kind,slots,expected", [("llama.cpp", 1, 4096), ("llama.cpp", 4, 1024), ("vllm", 1, 4096)])
def test_the_window_is_read_from_llama_cpp_props_or_vllm_models(kind, slots, expected):
    with FakeWindowServer(kind, model="m", n_ctx=4096, slots=slots) as server:
        data = config()
        data["backends"]["llama"]["base_url"] = server.url
        cfg = parse_config(data, env={})
        backend = create_backend("llama", cfg.backends["llama"])

        async def go():
            try:
                windows = ContextWindows(cfg)
                await windows.discover({"llama": backend})
                return windows, await read_server_window(backend, "m")
            finally:
                await backend.aclose()

        windows, (tokens, source) = asyncio.run(go())
    assert tokens == expected
    assert ("/props" if kind == "llama.cpp" else "max_model_len") in source
    assert windows.window("unknown").tokens == expected  # the unconfigured target learned it
    assert windows.window("small").tokens == 2048  # a configured window is never overridden


def test_a_server_that_cannot_say_leaves_the_window_unknown(caplog):
    from tests.doubles.fake_ollama import absent_url

    data = config()
    data["backends"]["llama"]["base_url"] = absent_url() + "/v1"
    cfg = parse_config(data, env={})
    backend = create_backend("llama", cfg.backends["llama"])

    async def go():
        try:
            windows = ContextWindows(cfg)
            await windows.discover({"llama": backend})
            return windows
        finally:
            await backend.aclose()

    windows = asyncio.run(go())
    assert windows.window("unknown").tokens is None
    assert "target unknown: could not read the context window" in caplog.text
    assert "Set targets.unknown.context_window" in caplog.text


# --- the estimate ------------------------------------------------------------------------------


def test_byte_classes_add_up():
    c = ByteClasses.of("héllo, world\n  x = 1".encode())
    assert (c.letters, c.digits, c.space, c.newline, c.non_ascii) == (10, 1, 5, 1, 2)
    assert c.total == len("héllo, world\n  x = 1".encode())
    assert c.punct == 2  # "," and "="


def test_estimate_counts_tools_tool_calls_results_and_images():
    base = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    tools = {**base, "tools": [{"name": "Read", "description": "Read a file " * 50,
                                "input_schema": {"type": "object"}}]}
    turn = {**base, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Read",
                                           "input": {"file_path": "/etc/" + "x" * 400}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "data " * 300},
                                     {"type": "image", "source": {"type": "base64", "data": "AAAA"}}]}]}
    small = estimate_input_tokens(base)
    assert estimate_input_tokens(tools) > small + 100
    assert estimate_input_tokens(turn) > small + 1600 + 300
    assert prompt_parts(turn).images == 1


def test_estimate_never_exceeds_one_token_per_byte_plus_message_overhead():
    text = "\u4f60\u597d" * 1000  # 6000 bytes of CJK
    req = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": text}]}
    assert estimate_input_tokens(req) <= len(text.encode()) + 8


@pytest.mark.skipif(not CC_FIXTURE.exists(), reason="the captured Claude Code request is missing")
def test_a_claude_code_request_is_estimated_well_above_bytes_over_four():
    body = CC_FIXTURE.read_bytes()
    req = json.loads(body)
    assert len(req["tools"]) > 10
    assert estimate_input_tokens(req) > len(prompt_parts(req).text) / 4


# --- routing around windows --------------------------------------------------------------------


def test_a_prompt_that_fits_goes_to_the_rule_target():
    cfg = parse_config(config(), env={})
    p = plan(cfg, request(2000, text="Write a Python function that parses dates. "))
    assert p.decision.target == "coder" and p.chain == ["coder", "small", "claude"]
    assert not p.context.skipped and p.context.header() == ""


def test_rule_target_that_is_too_small_is_skipped_and_marked():
    cfg = parse_config(config(), env={})
    # ~6000 tokens: more than small's 2048 and (with 1024 output) within coder's 8192.
    p = plan(cfg, request(16000, text="Write a Python function that parses dates. "))
    assert p.decision.target == "coder"
    assert p.chain[0] == "coder"
    assert "small" in p.context.skipped and p.context.header() == "small=context"
    trace = {t.rule: t.note for t in p.decision.trace}
    assert "context:small" in trace and "does not fit" in trace["context:small"]


def test_alias_and_override_targets_are_skipped_too():
    cfg = parse_config(config(rules=[]), env={})
    long = request(16000, model="claude-haiku-4-5")
    by_alias = plan(cfg, long)
    assert by_alias.decision.target == "small" and by_alias.chain == ["coder"]
    assert by_alias.context.header() == "small=context"
    by_override = plan(cfg, request(16000), override="small")
    assert by_override.decision.rule == "override" and by_override.chain == ["coder"]


def test_fits_local_is_a_rule_feature():
    cfg = parse_config(config(), env={})
    short, huge = plan(cfg, request(1000)), plan(cfg, request(200_000))
    assert short.features.fits_local and short.decision.rule != "big-to-coder"
    assert not huge.features.fits_local and huge.decision.rule == "big-to-coder"
    assert huge.features.context_tokens > 40_000


def test_output_reserve_is_the_request_max_tokens_capped_by_the_target():
    cfg = parse_config(config(), env={})
    # ~1300 input tokens fit small's 2048 only if the 32000 asked for is capped to 256.
    p = plan(cfg, request(2800, max_tokens=32000))
    fit = p.context.fits["small"]
    assert fit.output_tokens == 256
    assert fit.fits, fit.note()


def test_the_cloud_is_skipped_only_when_certainly_too_long():
    cfg = parse_config(config(), env={})
    fit = plan(cfg, request(500_000), override="claude").context.fits["claude"]
    assert fit.fits  # ~150K estimated: the cloud counts exactly and answers itself if it is too long
    assert not plan(cfg, request(1_200_000), override="claude").context.fits["claude"].fits


def test_nothing_fits_is_refused_before_any_backend_and_ledgered(tmp_path):
    data = config(tmp_path, rules=[])
    data["targets"]["small"]["fallback"] = []
    cfg = parse_config(data, env={})

    async def go():
        runtime = Runtime.open(cfg)  # every backend URL is a closed port: any call would fail loudly
        try:
            with pytest.raises(PromptTooLongError) as caught:
                await pipeline.complete(runtime, request(40_000), client="t", protocol="anthropic",
                                        override="small")
            return caught.value
        finally:
            await runtime.aclose()

    err = asyncio.run(go())
    assert err.status == 400 and err.message.startswith("prompt is too long: ")
    assert err.headers["x-aibox-skipped"] == "small=context"
    body = json.loads(anthropic_api.error_body(err))
    assert body == {"type": "error", "error": {"type": "invalid_request_error", "message": err.message}}
    match = re.fullmatch(r"prompt is too long: (\d+) tokens > (\d+) maximum", err.message)
    assert match and int(match[1]) > int(match[2])
    openai_body = json.loads(openai_api.error_body(err))["error"]
    assert openai_body["code"] == "context_length_exceeded" and openai_body["type"] == "invalid_request_error"
    assert "maximum context length" in openai_body["message"]
    store = SqliteLedger.in_state_dir(tmp_path)
    rows = store.rows("0000-00-00", "9999-99-99")
    store.close()
    assert [(r.status, r.target, r.skipped) for r in rows] == [("refused", "small", "small=context")]


# --- stream limits -----------------------------------------------------------------------------


async def _events(n: int, delay: float = 0.0):
    yield {"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 0}}}
    yield {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    for _ in range(n):
        if delay:
            await asyncio.sleep(delay)
        yield {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "la "}}
    yield {"type": "content_block_stop", "index": 0}
    yield {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": n}}
    yield {"type": "message_stop"}


class _Settled:
    def __init__(self):
        self.calls = []

    async def settle(self, status, http_status=200, error=""):
        self.calls.append((status, http_status, error))


class _Call(_Settled):
    target_name = "small"

    def observe(self, event):
        pass


async def _drain(events):
    seen = []
    try:
        async for e in events:
            seen.append(e)
    except StreamLimitError as err:
        return seen, err
    return seen, None


@pytest.mark.parametrize("n,limits,cut", [
    (50, pipeline.StreamLimits(output_tokens=64), False),
    (500, pipeline.StreamLimits(output_tokens=64), True),
    (500, pipeline.StreamLimits(), False),
])
def test_a_local_stream_past_its_output_cap_is_ended_with_an_error(n, limits, cut):
    call = _Call()
    upstream = _events(n)

    async def go():
        first = await upstream.__anext__()
        return await _drain(pipeline._relay(call, first, upstream, limits))

    seen, err = asyncio.run(go())
    deltas = sum(1 for e in seen if e["type"] == "content_block_delta")
    if cut:
        assert err is not None and "output cap of 64 tokens" in err.message
        assert deltas == 64 + pipeline._OUTPUT_CAP_SLACK
        assert call.calls == [("error", 502, err.message)]
    else:
        assert err is None and deltas == n and call.calls == [("ok", 200, "")]


def test_a_local_stream_past_its_wall_time_is_ended_with_an_error():
    call = _Call()
    upstream = _events(100, delay=0.02)

    async def go():
        import time

        first = await upstream.__anext__()
        limits = pipeline.StreamLimits(deadline=time.perf_counter() + 0.2, time_limit_s=0.2)
        return await _drain(pipeline._relay(call, first, upstream, limits))

    seen, err = asyncio.run(go())
    assert err is not None and "longer than its limit of 0.2 s" in err.message
    assert 0 < sum(1 for e in seen if e["type"] == "content_block_delta") < 100
    assert call.calls[0][:2] == ("error", 504)


# --- the operator's commands -------------------------------------------------------------------


def test_config_check_prints_every_window_and_warns_about_missing_ones(tmp_path):
    from click.testing import CliRunner

    from aibox_router.cli import main

    path = tmp_path / "router.yml"
    path.write_text(json.dumps(config(tmp_path)))
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "coder (local): 8192 tokens (targets.coder.num_ctx), output cap 1024" in result.stdout
    assert "claude (cloud): 200000 tokens (published window of claude-* models)" in result.stdout
    assert "unknown (local): unknown" in result.stdout
    assert f"warning: {path}: targets.unknown: local target has no context window" in result.stderr


@pytest.mark.skipif(not CC_FIXTURE.exists(), reason="the captured Claude Code request is missing")
def test_route_explain_shows_the_skip_with_its_numbers_and_probes_servers_on_request(tmp_path):
    from click.testing import CliRunner

    from aibox_router.cli import main

    with FakeWindowServer("vllm", model="x", n_ctx=4096) as server:
        data = config(tmp_path, rules=[])
        data["backends"]["llama"]["base_url"] = server.url
        data["targets"]["unknown"]["fallback"] = ["claude"]
        path = tmp_path / "router.yml"
        path.write_text(json.dumps(data))
        args = ["route", "explain", "-c", str(path), "--override", "unknown", str(CC_FIXTURE)]
        unprobed = CliRunner().invoke(main, args)
        probed = CliRunner().invoke(main, [*args, "--probe"])
    assert unprobed.exit_code == 0 and probed.exit_code == 0, probed.output
    assert "answers: target unknown" in unprobed.stdout and "window unknown" in unprobed.stdout
    assert "skip  context:unknown: target unknown skipped: does not fit" in probed.stdout
    assert "window 4096 (read from the server: vLLM GET /v1/models max_model_len)" in probed.stdout
    assert "answers: target claude" in probed.stdout
    assert "x-aibox-skipped: unknown=context" in probed.stdout
