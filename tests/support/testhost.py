"""A real systemd test host for provisioning tests: a thin wrapper around ``scripts/testhost``.

    host = TestHost()                 # the default host: scripts/testhost.defaults
    host = TestHost(name="aibox-selftest", net="10.231.89.0/30")
    host.up()                         # boots it; progress streams to stderr
    host.run("systemctl is-system-running").stdout
    ansible-playbook -i host.inventory ...   /   testinfra ssh://aibox with ssh_config=host.ssh_config
    host.down()

Needs root (systemd-nspawn, veth, nftables). See docs/testhost.md.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Self

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "testhost"
DEFAULT_STATE = Path("/var/lib/aibox-testhost")


def _read_defaults(path: Path = REPO_ROOT / "scripts" / "testhost.defaults") -> dict[str, str]:
    """``scripts/testhost.defaults``: the one home of the default host's name and net (KEY=value lines)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs}


_DEFAULTS = _read_defaults()
#: The default host, "the aibox in a box" (./aibox up); the environment overrides it as for the script.
DEFAULT_NAME = os.environ.get("AIBOX_TESTHOST_NAME") or _DEFAULTS["NAME"]
DEFAULT_NET = os.environ.get("AIBOX_TESTHOST_NET") or _DEFAULTS["NET"]


class TestHostError(RuntimeError):
    pass


class TestHost:
    """One systemd-nspawn test host. ``name`` and ``net`` (a /30) must be unique among live hosts."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        name: str = DEFAULT_NAME,
        net: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        script: str | os.PathLike[str] = SCRIPT,
    ):
        self.name = name
        self.net = net or DEFAULT_NET
        self.script = Path(script)
        self.state_root = Path(state_dir or os.environ.get("AIBOX_TESTHOST_STATE") or DEFAULT_STATE)
        self.dir = self.state_root / name
        self.inventory = self.dir / "inventory" / "hosts.yml"
        self.ssh_config = self.dir / "ssh_config"
        self.key = self.dir / "id_ed25519"
        self.ip: str | None = None

    # -- the script -------------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.net:
            env["AIBOX_TESTHOST_NET"] = self.net
        env["AIBOX_TESTHOST_STATE"] = str(self.state_root)
        return env

    def script_cmd(
        self, *args: str, timeout: float = 900, capture: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``scripts/testhost ARGS --name NAME``; its stderr (progress) goes straight to ours."""
        sys.stderr.flush()
        return subprocess.run(
            [str(self.script), *args[:1], "--name", self.name, *args[1:]],
            env=self.env,
            stdout=subprocess.PIPE if capture else None,
            stderr=None,  # inherited: progress streams live
            text=True,
            timeout=timeout,
            check=False,
        )

    def up(self, timeout: float = 900) -> TestHost:
        """Boot the host (idempotent). ``timeout`` covers a first-time rootfs build (~5 min)."""
        r = self.script_cmd("up", timeout=timeout)
        if r.returncode != 0:
            raise TestHostError(
                f"scripts/testhost up --name {self.name} failed with exit code {r.returncode}"
            )
        self.ip = self.script_cmd("ip", timeout=30).stdout.strip()
        inv = self.script_cmd("inventory", timeout=30).stdout.strip()
        if inv:
            self.inventory = Path(inv)
        return self

    def down(self, timeout: float = 120) -> None:
        r = self.script_cmd("down", timeout=timeout)
        if r.returncode != 0:
            raise TestHostError(
                f"scripts/testhost down --name {self.name} failed with exit code {r.returncode}"
            )

    def is_up(self) -> bool:
        return self.script_cmd("status", timeout=60).returncode == 0

    def status(self) -> str:
        return self.script_cmd("status", timeout=60).stdout

    # -- the host ---------------------------------------------------------------------------------

    def ssh_args(self) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "aibox"]

    def run(
        self, cmd: str | Sequence[str], check: bool = False, timeout: float = 300, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command in the host as root over SSH (a list is quoted for the remote shell)."""
        remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        return subprocess.run(
            [*self.ssh_args(), "--", remote],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            **stdin,
        )

    def testinfra_host(self):
        """A testinfra host object for this test host (needs pytest-testinfra)."""
        import testinfra

        return testinfra.get_host("ssh://aibox", ssh_config=str(self.ssh_config))

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()
