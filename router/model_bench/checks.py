"""Correctness checks for benchmark answers.

``python_function``
    Takes the first fenced Python code block of the answer (```python, else the first ``` block,
    else the whole answer when it starts with ``def``/``import``/``class``), defines it, and runs the
    task's ``tests`` (assert statements) in a separate, isolated Python process with a time limit
    and a memory limit. The answer is model-written code: it never runs inside the router.
``contains``
    Every listed string occurs in the answer (case-insensitive unless ``case_sensitive: true``).
``regex``
    The pattern matches somewhere in the answer (Python ``re``, ``re.IGNORECASE | re.DOTALL``
    unless ``case_sensitive: true``).

In a task file either form works: ``check: {type: contains, contains: [a, b]}`` or the short
``check: {contains: [a, b]}`` (likewise ``check: {regex: "..."}``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_START = re.compile(r"^\s*(def |class |import |from \S+ import )", re.MULTILINE)
_MEMORY_LIMIT = 512 * 1024 * 1024


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class Check:
    type: str  # "python_function", "contains" or "regex"
    function: str = ""
    tests: tuple[str, ...] = ()
    contains: tuple[str, ...] = ()
    pattern: str = ""
    case_sensitive: bool = False
    timeout_s: float = 10.0

    def evaluate(self, answer: str) -> CheckResult:
        if self.type == "contains":
            hay = answer if self.case_sensitive else answer.lower()
            missing = [s for s in self.contains if (s if self.case_sensitive else s.lower()) not in hay]
            return CheckResult(not missing, f"missing: {missing}" if missing else "all present")
        if self.type == "regex":
            flags = re.DOTALL if self.case_sensitive else re.DOTALL | re.IGNORECASE
            found = re.search(self.pattern, answer, flags) is not None
            return CheckResult(found, "matched" if found else f"no match for /{self.pattern}/")
        return run_python_tests(extract_python(answer), self.function, self.tests, self.timeout_s)


def parse_check(data: Any) -> Check:
    """A Check from a task file's ``check`` mapping; ValueError naming the problem."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping, found {type(data).__name__}")  # noqa: TRY004 - a config error
    kind = data.get("type") or next((k for k in ("contains", "regex") if k in data), None)
    case = bool(data.get("case_sensitive", False))
    timeout = float(data.get("timeout_s", 10.0))
    if kind == "python_function":
        function, tests = data.get("function"), data.get("tests")
        if not isinstance(function, str) or not function.isidentifier():
            raise ValueError(f"function: expected a Python function name, found {function!r}")
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise ValueError("tests: expected a non-empty list of assert statements")
        for t in tests:
            compile(t, "<check>", "exec")  # a typo in a test must fail at load, not count as a model failure
        return Check("python_function", function=function, tests=tuple(tests), timeout_s=timeout)
    if kind == "contains":
        items = data.get("contains")
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list) or not items:
            raise ValueError("contains: expected a non-empty list of strings")
        return Check("contains", contains=tuple(str(i) for i in items), case_sensitive=case)
    if kind == "regex":
        pattern = data.get("regex") or data.get("pattern")
        if not isinstance(pattern, str):
            raise ValueError("regex: expected a pattern")
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"regex: invalid pattern {pattern!r}: {e}") from None
        return Check("regex", pattern=pattern, case_sensitive=case)
    raise ValueError(f"type: expected python_function, contains or regex, found {kind!r}")


def extract_python(answer: str) -> str:
    """The code in *answer*: the first ```python block, else the first fenced block, else the text."""
    blocks = _FENCE.findall(answer)
    for lang, code in blocks:
        if lang.lower() in ("python", "py", "python3"):
            return str(code)
    if blocks:
        return str(blocks[0][1])
    m = _CODE_START.search(answer)
    return answer[m.start():] if m else answer


def _limit_resources() -> None:  # runs in the child before exec
    import resource  # used only here, in the child process

    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT, _MEMORY_LIMIT))


def run_python_tests(code: str, function: str, tests: tuple[str, ...] | list[str],
                     timeout_s: float = 10.0) -> CheckResult:
    """Define *code*, then run each assert; pass when all hold within *timeout_s*."""
    if not code.strip():
        return CheckResult(False, "no code in the answer")
    harness = "\n".join([
        "import sys",
        "ns = {'__name__': 'solution'}",
        "exec(compile(open(sys.argv[1]).read(), 'solution.py', 'exec'), ns)",
        f"assert {function!r} in ns, 'the answer does not define {function}()'",
        "globals().update(ns)",
        *(f"exec(compile({t!r}, 'test', 'exec'), globals())" for t in tests),
        "print('ok')",
    ])
    with tempfile.TemporaryDirectory(prefix="aibox-bench-") as tmp:
        path = os.path.join(tmp, "solution.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(code)
        try:
            # Our own interpreter, isolated (-I), in a temp dir, with a memory limit.
            proc = subprocess.run(
                [sys.executable, "-I", "-c", harness, path], check=False, cwd=tmp, capture_output=True,
                text=True, timeout=timeout_s, preexec_fn=_limit_resources if os.name == "posix" else None,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        except subprocess.TimeoutExpired:
            return CheckResult(False, f"timed out after {timeout_s:.0f}s")
    if proc.returncode == 0:
        return CheckResult(True, f"{len(tests)} test(s) passed")
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return CheckResult(False, lines[-1][:300] if lines else f"exit status {proc.returncode}")
