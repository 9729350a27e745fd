"""roles/models/files/model_store_report.py: which models Ollama's store holds, and its free space.

The disk-space preflight relies on it, on the box, before Ollama may be installed. The manifest
layout is cross-checked against the Ollama test stand-in, which writes manifests where Ollama does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doubles.ollama_standin import ollama_standin

SCRIPT = Path(__file__).resolve().parents[2] / "roles" / "models" / "files" / "model_store_report.py"
_spec = importlib.util.spec_from_file_location("model_store_report", SCRIPT)
assert _spec and _spec.loader
store_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(store_report)


@pytest.mark.parametrize(("name", "parts"), [
    ("qwen2.5:14b", ("registry.ollama.ai", "library", "qwen2.5", "14b")),
    ("mistral", ("registry.ollama.ai", "library", "mistral", "latest")),
    ("someone/model:q4", ("registry.ollama.ai", "someone", "model", "q4")),
    ("hf.co/org/model:Q4_K_M", ("hf.co", "org", "model", "Q4_K_M")),
    ("mirror.lan:5000/library/qwen2.5", ("mirror.lan:5000", "library", "qwen2.5", "latest")),
])
def test_manifest_path_follows_ollamas_layout(tmp_path, name, parts):
    assert store_report.manifest_path(str(tmp_path), name) == str(tmp_path.joinpath("manifests", *parts))


@pytest.mark.parametrize("name", ["qwen2.5:0.5b", "mistral", "someone/model:q4"])
def test_same_layout_as_the_standin(tmp_path, monkeypatch, name):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    assert store_report.manifest_path(str(tmp_path), name) == str(ollama_standin._manifest_path(name))


def test_report_lists_present_and_missing_models(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    ollama_standin._write_model("qwen2.5:0.5b")
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "qwen2.5:0.5b", "mistral:7b"],
                         capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["present"] == ["qwen2.5:0.5b"]
    assert report["missing"] == ["mistral:7b"]
    assert report["checked_path"] == str(tmp_path)
    fs = os.statvfs(tmp_path)
    assert report["free_bytes"] == pytest.approx(fs.f_bavail * fs.f_frsize, rel=0.05)
    assert os.path.ismount(report["mount_point"])


def test_a_store_not_yet_created_is_judged_by_its_parent(tmp_path):
    report = store_report.report(str(tmp_path / "not" / "yet" / "models"), ["qwen2.5:14b"])
    assert report["checked_path"] == str(tmp_path)
    assert report["missing"] == ["qwen2.5:14b"] and report["present"] == []
    assert report["free_bytes"] > 0


def test_no_arguments_is_a_usage_error():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "STORE_DIR" in out.stderr
