"""The budget and the emergency cutoff as hard ceilings (issue 11): the real router process, the Anthropic
double billing every call the most it can (each prompt byte as a 1-hour cache write, the full
max_tokens), 24 concurrent Claude Code-sized calls at max_tokens 64000 on a day that already spent $6.
Settled spend must end at or under the daily budget: overshoot exactly $0."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest

from aibox_router.cost.ledger import LedgerRow, SqliteLedger
from tests.doubles.fake_ollama import FakeOllama
from tests.support.router_process import RouterProcess

KEY = "ceiling-client-key-0123456789"
CALLS = 24
MAX_TOKENS = 64_000
ALREADY_SPENT = Decimal("6.00")
DAILY, CUTOFF = Decimal("10.00"), Decimal("12.00")
# A Claude Code-sized turn: about 60 KB of conversation (Claude Code sends 80-120 KB).
PROMPT = "Refactor the module below.\n" + "def f(x):\n    return x * 2\n" * 2100


def config(anthropic_url: str, ollama_url: str, cap: int | None) -> dict:
    budgets = {"timezone": "UTC", "daily_budget": float(DAILY), "alert_threshold": 8.0,
               "emergency_cutoff": float(CUTOFF)}
    if cap is not None:
        budgets["reserve_output_tokens_cap"] = cap
    return {  # no `prices`: the embedded table prices claude-opus-4-6
        "clients": [{"name": "dev", "key": KEY}],
        "backends": {"cloud": {"type": "anthropic", "base_url": anthropic_url, "api_key_env": "CEILING_TEST_KEY"},
                     "ollama": {"type": "ollama", "base_url": ollama_url}},
        "targets": {"opus": {"backend": "cloud", "model": "claude-opus-4-6", "fallback": ["local"]},
                    # a window that holds the turn, so a budget refusal can fall back to it
                    "local": {"backend": "ollama", "model": "qwen2.5-coder:7b", "num_ctx": 131072}},
        "default_target": "opus",
        "budgets": budgets,
        "gpu": {"enabled": False},
    }


def ask(url: str, index: int) -> tuple[int, dict[str, str]]:
    body = {"model": "claude-opus-4-6", "max_tokens": MAX_TOKENS, "stream": index % 2 == 1,
            "system": "You are Claude Code.", "messages": [{"role": "user", "content": f"{index}: {PROMPT}"}]}
    with httpx.stream("POST", f"{url}/v1/messages", headers={"x-api-key": KEY}, json=body, timeout=120) as r:
        r.read()
        return r.status_code, dict(r.headers)


@pytest.mark.parametrize("cap", [128_000, None], ids=["full-max-tokens-reserved", "clamped-to-default-cap"])
def test_concurrent_worst_case_calls_settle_with_zero_overshoot(tmp_path, fake_anthropic, cap) -> None:
    fake_anthropic.bill_worst_case = True
    fake_anthropic.delay_s = 0.5  # all 24 in flight together
    router = RouterProcess(config(fake_anthropic.url, "http://127.0.0.1:9", cap), tmp_path,
                           env={"CEILING_TEST_KEY": "sk-ant-test"})
    today = datetime.now(UTC).date().isoformat()
    ledger = SqliteLedger.in_state_dir(tmp_path / "state")
    ledger.insert(LedgerRow(ts=time.time(), day=today, client="dev", rule="earlier", target="opus", backend="cloud",
                            model="claude-opus-4-6", protocol="anthropic", stream=False, cloud=True,
                            cost_usd=ALREADY_SPENT))
    ledger.close()
    with FakeOllama(models=["qwen2.5-coder:7b"]) as ollama:
        for _ in range(CALLS):
            ollama.reply_text("local answer")
        router.write_config(config(fake_anthropic.url, ollama.url, cap))
        with router:
            with ThreadPoolExecutor(max_workers=CALLS) as pool:
                results = list(pool.map(lambda i: ask(router.url, i), range(CALLS)))
            shown = subprocess.run([sys.executable, "-m", "aibox_router", "budget", "show", "--json", "-c",
                                    str(router.config_path)], capture_output=True, text=True, timeout=60,
                                   env=router.env, check=True)
    assert all(status == 200 for status, _ in results), results
    cloud = [h for _, h in results if h["x-aibox-backend"] == "cloud"]
    assert cloud and len(cloud) < CALLS
    spend = Decimal(str(json.loads(shown.stdout)["spend_usd"]))
    over_budget = max(Decimal(0), spend - DAILY)
    over_cutoff = max(Decimal(0), spend - CUTOFF)
    print(f"\n[{cap=}] {len(cloud)} of {CALLS} calls went to the cloud, each billed the worst case; settled "
          f"${spend} (${ALREADY_SPENT} before); over budget ${over_budget}, over cutoff ${over_cutoff}")
    sent = [r.body["max_tokens"] for r in fake_anthropic.requests if r.path == "/v1/messages"]
    if cap is None:  # the default cap, 32000: max_tokens lowered to what was reserved, and said so
        assert all(h["x-aibox-max-tokens-clamped"] == "64000->32000" for h in cloud)
        assert set(sent) == {32_000}
    else:
        assert all("x-aibox-max-tokens-clamped" not in h for h in cloud) and set(sent) == {MAX_TOKENS}
    assert spend > ALREADY_SPENT  # the cloud calls were billed
    assert over_budget == 0 and over_cutoff == 0
