"""Drive the team onboarding for real from tests and benchmarks: the router role's template (via
Ansible, as playbooks/team.yml renders it) and the pyinfra deploy (deploy/developer.py, as an admin or
a developer runs it). Nothing here stands in for anything: both run as subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
TEAM_FILE = REPO / "inventory" / "group_vars" / "aibox" / "team.yml"
RENDER_PLAYBOOK = REPO / "tests" / "support" / "render_router_config.yml"
NPM_MODULES = Path(os.environ.get("AIBOX_CACHE") or "/var/cache/aibox") / "npm" / "node_modules"
CLAUDE = NPM_MODULES / ".bin" / "claude"
CONTINUE_VALIDATOR = REPO / "tests" / "support" / "validate_continue_config.mjs"
ENSURE_HINT = "run scripts/ensure-team-tools first (./aibox test does)"
_VENV_BIN = Path(sys.executable).parent


@dataclass
class TeamDir:
    """A team inventory of its own: team.yml, the credentials directory, and the files of a run."""

    root: Path
    router_url: str

    @property
    def team_file(self) -> Path:
        return self.root / "team.yml"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials"

    def write(self, developers: list[dict[str, Any]], **extra: Any) -> None:
        """team.yml as the repository's, with this router URL and these developers."""
        shared = yaml.safe_load(TEAM_FILE.read_text())
        settings = {k: v for k, v in shared.items() if k not in ("team_developers", "team_credentials_dir")}
        self.team_file.write_text(yaml.safe_dump({**settings, "team_router_url": self.router_url,
                                                  "team_developers": developers, **extra}, sort_keys=False))

    def developers(self) -> list[dict[str, Any]]:
        return yaml.safe_load(self.team_file.read_text())["team_developers"]

    def env(self) -> dict[str, str]:
        return {"AIBOX_TEAM_FILE": str(self.team_file), "AIBOX_CREDENTIALS_DIR": str(self.credentials)}


@dataclass
class PyinfraRun:
    returncode: int
    output: str
    changed: int      # operations that changed something (the "Success" column of the grand total)
    unchanged: int    # operations that found nothing to do ("No Change")
    seconds: float


_TOTAL = re.compile(r"Grand total\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)")


def _count(cell: str) -> int:
    return 0 if cell == "-" else int(cell)


def run_pyinfra(team: TeamDir, inventory: str, home: Path | None = None, *extra: str,
                timeout: float = 300) -> PyinfraRun:
    """``pyinfra -y INVENTORY deploy/developer.py`` from the repository root; *home* becomes $HOME
    (the @local developer's home)."""
    env = {**os.environ, **team.env()}
    if home is not None:
        env["HOME"] = str(home)
    start = time.monotonic()
    run = subprocess.run([str(_VENV_BIN / "pyinfra"), "-y", inventory, "deploy/developer.py", *extra],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.monotonic() - start
    output = run.stdout + run.stderr
    total = _TOTAL.search(output)
    changed, unchanged = (_count(total.group(2)), _count(total.group(4))) if total else (-1, -1)
    return PyinfraRun(run.returncode, output, changed, unchanged, seconds)


def render_clients(team: TeamDir, workdir: Path) -> list[dict[str, Any]]:
    """The router config's ``clients`` as the router role templates them from *team*'s developers
    (keys generated into its credentials directory on the first run)."""
    workdir.mkdir(parents=True, exist_ok=True)
    extra = {"team_developers": team.developers(), "team_credentials_dir": str(team.credentials),
             "render_cron": False}
    run = subprocess.run([str(_VENV_BIN / "ansible-playbook"), "-i", str(REPO / "inventory" / "hosts.yml"),
                          str(RENDER_PLAYBOOK), "-e", f"render_dir={workdir}", "-e", json.dumps(extra)],
                         cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"rendering the router config failed:\n{run.stdout}{run.stderr}")
    return yaml.safe_load((workdir / "config.yml").read_text())["clients"]


def tree(home: Path) -> dict[str, str | None]:
    """Every file (text) and directory (None) under *home*, by relative path."""
    return {str(p.relative_to(home)): (p.read_text() if p.is_file() else None)
            for p in sorted(home.rglob("*"))}


def validate_continue_config(path: Path) -> dict[str, Any]:
    """Continue's own schema (npm @continuedev/config-yaml) applied to *path*."""
    run = subprocess.run(["node", str(CONTINUE_VALIDATOR), str(NPM_MODULES), str(path)],
                         capture_output=True, text=True, timeout=60, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"the Continue schema validator failed ({ENSURE_HINT}):\n{run.stderr}")
    return json.loads(run.stdout)


def claude_env(home: Path) -> dict[str, str]:
    """A clean environment for the real Claude Code: nothing but PATH and HOME, so every setting it
    uses comes from the files the deploy wrote under *home*."""
    return {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home)}
