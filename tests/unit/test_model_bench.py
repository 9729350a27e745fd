"""Bench pieces that need no model: task files, correctness checks, summary, recommendation, chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aibox_router.cli.common import load_or_exit
from aibox_router.features import TASKS
from aibox_router.model_bench import report
from aibox_router.model_bench.checks import extract_python, parse_check, run_python_tests
from aibox_router.model_bench.runner import BenchRun, local_targets
from aibox_router.model_bench.suite import TaskFileError, builtin_tasks, load_tasks


def test_builtin_tasks_cover_the_four_kinds_and_all_have_checks():
    tasks = builtin_tasks()
    assert {"code_generation", "debugging", "explanation", "documentation"} <= {t.type for t in tasks}
    assert all(t.type in TASKS and t.check is not None for t in tasks)
    assert len({t.name for t in tasks}) == len(tasks)


def test_user_task_dir_only_filter_and_errors(tmp_path: Path):
    (tmp_path / "mine.yml").write_text("type: general\nprompt: Say hi\nmax_tokens: 8\ncheck: {contains: [hi]}\n")
    tasks = load_tasks([tmp_path], only=["mine"])
    assert [t.name for t in tasks] == ["mine"]
    assert tasks[0].request("m") == {"model": "m", "max_tokens": 8, "stream": True, "temperature": 0,
                                     "messages": [{"role": "user", "content": "Say hi"}]}
    assert {t.type for t in load_tasks(only=["debugging"])} == {"debugging"}
    (tmp_path / "bad.yml").write_text("type: poetry\nprompt: x\n")
    with pytest.raises(TaskFileError, match=r"bad.yml: type: expected one of"):
        load_tasks([tmp_path], builtin=False)


def test_check_typo_in_a_test_fails_at_load():
    with pytest.raises(SyntaxError):
        parse_check({"type": "python_function", "function": "f", "tests": ["assert f(1) =="]})
    with pytest.raises(ValueError, match="regex: invalid pattern"):
        parse_check({"regex": "("})


def test_extract_python_prefers_the_python_block():
    answer = "Here:\n```text\nnot code\n```\nand\n```python\ndef f():\n    return 1\n```\n"
    assert extract_python(answer).strip() == "def f():\n    return 1"
    assert extract_python("Sure.\ndef g(x):\n    return x\n").startswith("def g")


def test_python_function_check_runs_in_a_subprocess():
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    check = parse_check({"type": "python_function", "function": "add", "tests": ["assert add(2, 3) == 5"]})
    assert check.evaluate(good).passed
    wrong = check.evaluate("```python\ndef add(a, b):\n    return a - b\n```")
    assert not wrong.passed and "AssertionError" in wrong.detail
    missing = check.evaluate("```python\ndef plus(a, b):\n    return a + b\n```")
    assert not missing.passed and "does not define add" in missing.detail
    slow = run_python_tests("def add(a, b):\n    while True: pass\n", "add", ["assert add(1, 2)"], timeout_s=1)
    assert not slow.passed and "timed out" in slow.detail


def test_contains_and_regex_checks():
    assert parse_check({"contains": ["Args", "returns"]}).evaluate("Args: x\nReturns: y").passed
    assert not parse_check({"type": "contains", "contains": ["Raises"], "case_sensitive": True}).evaluate(
        "raises").passed
    assert parse_check({"regex": r"O\(n\^2\)"}).evaluate("It is o(N^2).").passed


def _run(target: str, task_type: str, passed: bool | None, tps: float, ttft: float, error: str = "") -> BenchRun:
    return BenchRun(target=target, backend="b", model=f"{target}-model", task=f"{task_type}-task",
                    task_type=task_type, repeat=1, ok=not error, error=error, ttft_ms=ttft, total_ms=ttft * 3,
                    tokens_per_s=tps, passed=passed, output_tokens=10)


def test_summary_recommendation_and_rules_yaml():
    runs = [_run("fast", "code_generation", False, 90, 100), _run("coder", "code_generation", True, 30, 300),
            _run("fast", "explanation", True, 90, 100), _run("coder", "explanation", True, 30, 300),
            _run("fast", "debugging", None, 0, 0, error="timed out")]
    summary = report.summarize(runs)
    assert summary["coder"]["pass_rate"] == 1.0
    assert summary["fast"]["errors"] == 1
    recs = {r.task_type: r.target for r in report.recommend(summary)}
    assert recs == {"code_generation": "coder", "explanation": "fast"}  # debugging: nobody answered
    yaml_text = report.rules_yaml(report.recommend(summary))
    assert "when: 'task == \"code_generation\"'" in yaml_text and "target: coder" in yaml_text
    table = report.table(summary)
    assert table.splitlines()[0].split()[:3] == ["target", "model", "runs"]
    assert "fast" in table and "coder" in table


def test_rules_yaml_follows_the_verdict_when_no_local_target_passed():
    runs = [_run("fast", "pattern_recognition", False, 90, 100), _run("coder", "pattern_recognition", False, 30, 300),
            _run("coder", "code_generation", True, 30, 300)]
    recs = report.recommend(report.summarize(runs))
    to_cloud = yaml.safe_load(report.rules_yaml(recs, cloud_target="claude"))["rules"]
    assert {r["target"]: r["when"] for r in to_cloud} == {"coder": 'task == "code_generation"',
                                                          "claude": 'task == "pattern_recognition"'}
    no_cloud = report.rules_yaml(recs)
    assert [r["target"] for r in yaml.safe_load(no_cloud)["rules"]] == ["coder"]  # never the target that failed it
    assert "# pattern_recognition: no local target passed" in no_cloud


def test_document_roundtrips_as_json(tmp_path: Path):
    runs = [_run("fast", "explanation", True, 90, 100)]
    doc = report.document(runs, builtin_tasks()[:1], config_path="c.yml", repeat=1, gpu="no GPU",
                          with_recommendations=True)
    out = tmp_path / "sub" / "model_performance.json"
    report.write_json(doc, out)
    data = json.loads(out.read_text())
    assert data["version"] == 1 and data["runs"][0]["tokens_per_s"] == 90
    assert data["recommendations"]["explanation"]["target"] == "fast"


def test_chart_png(tmp_path: Path):
    from aibox_router.model_bench.chart import draw_chart

    summary = report.summarize([_run("fast", "explanation", True, 90, 100), _run("coder", "debugging", False, 3, 9)])
    path = tmp_path / "chart.png"
    draw_chart(summary, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_local_targets_of_the_default_config():
    cfg = load_or_exit(None)
    assert "claude" not in local_targets(cfg) and "coder" in local_targets(cfg)
