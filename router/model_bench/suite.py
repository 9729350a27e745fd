"""Benchmark tasks: YAML files, one task per file (or a ``tasks:`` list), validated on load.

A task file::

    name: is-palindrome                  # unique; defaults to the file name
    type: code_generation                # a routing task type (features.TASKS)
    max_tokens: 400
    system: You are a careful programmer.   # optional
    prompt: |
      Write a Python function is_palindrome(s) ...
    check:                               # optional correctness check, see checks.py
      type: python_function
      function: is_palindrome
      tests: ["assert is_palindrome('A man, a plan, a canal: Panama')"]
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..features import TASKS
from .checks import Check, parse_check


class TaskFileError(Exception):
    """A task file is unreadable or invalid; the message names the file and the key."""


@dataclass(frozen=True)
class BenchTask:
    """One benchmark task as read from a task file (its keys: docs/gpu-bench-mcp.md, "Task files");
    ``source`` names the file (and ``tasks[i]``) it came from, for error messages."""

    name: str
    type: str
    prompt: str
    max_tokens: int = 512
    system: str | None = None
    check: Check | None = None
    timeout_s: float = 300.0
    source: str = ""
    description: str = ""
    tags: tuple[str, ...] = field(default=())

    def request(self, model: str) -> dict[str, Any]:
        """The Anthropic Messages request this task sends (streaming, deterministic)."""
        req: dict[str, Any] = {"model": model, "max_tokens": self.max_tokens, "stream": True, "temperature": 0,
                               "messages": [{"role": "user", "content": self.prompt}]}
        if self.system:
            req["system"] = self.system
        return req


def _task_from(data: Any, source: str, default_name: str) -> BenchTask:
    if not isinstance(data, dict):
        raise TaskFileError(f"{source}: expected a mapping, found {type(data).__name__}")
    known = {"name", "type", "prompt", "max_tokens", "system", "check", "timeout_s", "description", "tags"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TaskFileError(f"{source}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    task_type = data.get("type")
    if task_type not in TASKS:
        raise TaskFileError(f"{source}: type: expected one of {list(TASKS)}, found {task_type!r}")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise TaskFileError(f"{source}: prompt: expected non-empty text")
    max_tokens = data.get("max_tokens", 512)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise TaskFileError(f"{source}: max_tokens: expected a positive integer, found {max_tokens!r}")
    try:
        check = parse_check(data["check"]) if data.get("check") is not None else None
    except ValueError as e:
        raise TaskFileError(f"{source}: check: {e}") from None
    return BenchTask(name=str(data.get("name") or default_name), type=task_type, prompt=prompt,
                     max_tokens=max_tokens, system=data.get("system"), check=check,
                     timeout_s=float(data.get("timeout_s", 300.0)), source=source,
                     description=str(data.get("description") or ""),
                     tags=tuple(str(t) for t in data.get("tags") or ()))


def parse_task_file(text: str, source: str, default_name: str) -> list[BenchTask]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TaskFileError(f"{source}: not valid YAML: {e}") from None
    if isinstance(data, dict) and set(data) == {"tasks"}:
        items = data["tasks"]
        if not isinstance(items, list):
            raise TaskFileError(f"{source}: tasks: expected a list")
        return [_task_from(item, f"{source}: tasks[{i}]", f"{default_name}-{i}") for i, item in enumerate(items)]
    return [_task_from(data, source, default_name)]


def _yaml_files(directory: Any) -> list[Any]:
    return sorted((p for p in directory.iterdir() if p.name.endswith((".yml", ".yaml"))), key=lambda p: p.name)


def builtin_tasks() -> list[BenchTask]:
    """The tasks shipped with the router (package data ``model_bench/tasks/*.yml``)."""
    directory = resources.files("aibox_router.model_bench").joinpath("tasks")
    tasks: list[BenchTask] = []
    for f in _yaml_files(directory):
        tasks += parse_task_file(f.read_text(encoding="utf-8"), f"<builtin>/{f.name}", Path(f.name).stem)
    return tasks


def load_tasks(dirs: Sequence[str | Path] = (), *, builtin: bool = True,
               only: Sequence[str] = ()) -> list[BenchTask]:
    """Built-in tasks plus every ``*.yml`` in *dirs* (or a single file); *only* keeps tasks whose
    name or type matches one of the globs. Names must be unique."""
    tasks = builtin_tasks() if builtin else []
    for d in dirs:
        path = Path(d)
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = _yaml_files(path)
        else:
            raise TaskFileError(f"{path}: no such task file or directory")
        for f in files:
            try:
                text = f.read_text(encoding="utf-8")
            except OSError as e:
                raise TaskFileError(f"{f}: cannot read: {e.strerror}") from None
            tasks += parse_task_file(text, str(f), f.stem)
    if only:
        tasks = [t for t in tasks if any(fnmatch.fnmatchcase(t.name, g) or t.type == g for g in only)]
    seen: dict[str, str] = {}
    for t in tasks:
        if t.name in seen:
            raise TaskFileError(f"{t.source}: task name {t.name!r} is already used by {seen[t.name]}")
        seen[t.name] = t.source
    return tasks
