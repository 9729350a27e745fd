"""The Ansible tree passes ansible-lint's production profile and Ansible's own syntax check.

Static checks only: nothing is contacted (ansible-lint runs offline, see .ansible-lint)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "NO_COLOR": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_ansible_lint_production_profile_passes():
    result = run(str(BIN / "ansible-lint"), "--profile", "production")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


# Every playbook, not a hand-picked few.
@pytest.mark.parametrize("playbook", ["site.yml", *sorted(p.relative_to(REPO).as_posix()
                                                        for p in (REPO / "playbooks").glob("*.yml"))])
def test_syntax_check(playbook):
    result = run(str(BIN / "ansible-playbook"), "--syntax-check", "-i", "inventory/hosts.yml", playbook)
    assert result.returncode == 0, result.stdout + result.stderr
