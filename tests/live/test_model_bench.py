"""``aibox-router bench`` end to end against a REAL local model (llama-cpp-python serving SmolLM2-135M).

Provisioned by scripts/ensure-local-model; the server is the session fixture ``llama_url``
(tests/conftest.py). Skipped only when AIBOX_SKIP_LOCAL_MODEL=1; when the
model is missing otherwise the test fails and says how to provision it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml


def test_bench_end_to_end(llama_url: str, tmp_path: Path) -> None:
    config = {
        "server": {"state_dir": str(tmp_path / "state")},
        "backends": {"llama": {"type": "openai", "base_url": llama_url, "read_timeout_s": 240},
                     "cloud": {"type": "anthropic", "base_url": "http://127.0.0.1:9"}},
        "targets": {"small": {"backend": "llama", "model": "smollm2", "max_output_tokens": 24},
                    "claude": {"backend": "cloud", "model": "claude-sonnet-4-6"}},
        "default_target": "small",
        "prices": [{"prefix": "claude-sonnet-4", "input": 3.0, "output": 15.0}],
    }
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "greet.yml").write_text(
        "type: general\nmax_tokens: 16\nprompt: Say hello to Ada in one short sentence.\n"
        "check: {regex: '\\w'}\n")
    out, chart = tmp_path / "perf.json", tmp_path / "chart.png"
    proc = subprocess.run(
        [sys.executable, "-m", "aibox_router", "bench", "-c", str(tmp_path / "config.yml"), "--tasks", str(tasks),
         "--only", "greet,explain-complexity", "--repeat", "1", "--output", str(out), "--chart", str(chart),
         "--recommend"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"})
    assert proc.returncode == 0, proc.stderr

    # Progress: one line per task per model, on stderr; the default is every local target (not the cloud).
    progress = [line for line in proc.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == 2 and all(" small " in line for line in progress), proc.stderr

    doc = json.loads(out.read_text())
    assert doc["version"] == 1 and {t["name"] for t in doc["tasks"]} == {"greet", "explain-complexity"}
    assert len(doc["runs"]) == 2
    for run in doc["runs"]:
        assert run["target"] == "small" and run["model"] == "smollm2" and run["error"] == "", run
        assert run["ok"] is True and run["answer_chars"] > 0
        assert 0 < run["ttft_ms"] <= run["total_ms"]
        # The target's max_output_tokens caps the tasks (the count is estimated from characters when
        # the server reports no usage in the stream, so allow that estimate some slack).
        assert 0 < run["output_tokens"] <= (24 if not run["usage_estimated"] else 48), run
        assert run["tokens_per_s"] > 0
        assert isinstance(run["passed"], bool)
    greet = next(r for r in doc["runs"] if r["task"] == "greet")
    assert greet["passed"] is True
    summary = doc["summary"]["small"]
    assert summary["runs"] == 2 and summary["errors"] == 0 and summary["tokens_per_s_median"] > 0
    assert set(doc["recommendations"]) == {"general", "explanation"}

    header = next(line for line in proc.stdout.splitlines() if line.startswith("target"))
    assert header.split() == ["target", "model", "runs", "errors", "pass", "TTFT", "tok/s", "total"]
    assert any(line.startswith("small") and "smollm2" in line for line in proc.stdout.splitlines())
    assert "target: small" in proc.stdout  # the recommended rule lines
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
