"""The README's entry points: `./aibox` lists and dispatches every command it has, and the test host's
defaults (name, net) have one home that the script, the Python wrapper and `./aibox` all read."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.support import testhost
from tests.support.testhost import REPO_ROOT, defaults

AIBOX = REPO_ROOT / "aibox"


def dispatched_commands() -> set[str]:
    """The subcommands the script's `case` sends to a cmd_* function."""
    match = re.search(r"^\s*([a-z|]+)\) cmd=\$1; shift", AIBOX.read_text(), re.MULTILINE)
    assert match, "./aibox no longer dispatches through one case line"
    return set(match.group(1).split("|"))


def test_help_exits_0_and_lists_every_command():
    r = subprocess.run([str(AIBOX), "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    listed = set(re.findall(r"^\s*\./aibox ([a-z]+)", r.stdout, re.MULTILINE))
    assert dispatched_commands() <= listed, f"not in --help: {dispatched_commands() - listed}"
    assert {"up", "test", "converge", "verify", "down"} <= listed


def test_every_dispatched_command_has_a_function():
    text = AIBOX.read_text()
    for command in dispatched_commands():
        assert re.search(rf"^cmd_{command}\(\)", text, re.MULTILINE), f"cmd_{command} is missing"


def test_unknown_command_is_an_error_with_usage():
    r = subprocess.run([str(AIBOX), "upp"], capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 2
    assert "unknown command 'upp'" in r.stderr and "./aibox up" in r.stderr


def test_test_host_defaults_have_one_home():
    """tests/support/testhost/defaults.py; the wrapper, the CLI and ./aibox spell none of it out."""
    assert (defaults.NAME, defaults.NET) == ("aibox-box", "10.231.91.0/30")
    host = testhost.TestHost()
    assert (host.name, host.net) == (testhost.DEFAULT_NAME, testhost.DEFAULT_NET)
    assert host.state_root == Path(os.environ.get("AIBOX_TESTHOST_STATE") or defaults.STATE_ROOT)
    package = REPO_ROOT / "tests" / "support" / "testhost"
    others = [p for p in package.glob("*.py") if p.name != "defaults.py"]
    for path in [*others, REPO_ROOT / "scripts" / "testhost", AIBOX]:
        text = path.read_text()
        for value in ("aibox-box", "10.231.91", "/var/lib/aibox-testhost", "/var/cache/aibox", "bookworm"):
            if path == AIBOX and value == "/var/cache/aibox":
                continue  # the project's cache root, which ./aibox sets for every tool, not only this one
            assert value not in text, f"{path.relative_to(REPO_ROOT)} repeats the default {value!r}"
