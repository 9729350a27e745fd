"""A real systemd test host for provisioning tests (systemd-nspawn, veth /30, NAT, sshd).

    host = TestHost()                 # the default host: tests/support/testhost/defaults.py
    host = TestHost(name="aibox-selftest", net="10.231.89.0/30")
    host.up()                         # boots it; progress streams to stderr
    host.run("systemctl is-system-running").stdout
    ansible-playbook -i host.inventory ...   /   testinfra ssh://aibox with ssh_config=host.ssh_config
    host.down()

``scripts/testhost`` is the command line for the same code. The package, one job per module:

    defaults.py   the one set of defaults          spec.py      names, paths, /30 arithmetic, net.env
    rootfs.py     debootstrap tarball, prepared copy  network.py   veth address, ip_forward, nft NAT
    access.py     inventory, ssh_config, ssh command  procs.py     /proc: PIDs checked before use
    lifecycle.py  up / down / status                cli.py       scripts/testhost's command line
    tools.py      running the real tools, progress

Needs root (systemd-nspawn, veth, nftables) for up and down. See docs/testhost.md.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from typing import Any, Self

from tests.support.testhost import defaults, lifecycle
from tests.support.testhost.access import ssh_command
from tests.support.testhost.spec import Host
from tests.support.testhost.tools import TestHostError

__all__ = ["DEFAULT_NAME", "DEFAULT_NET", "REPO_ROOT", "TestHost", "TestHostError"]

REPO_ROOT = defaults.REPO_ROOT
#: The default host, "the aibox in a box" (./aibox up); the environment overrides it as for the script.
DEFAULT_NAME = os.environ.get("AIBOX_TESTHOST_NAME") or defaults.NAME
DEFAULT_NET = os.environ.get("AIBOX_TESTHOST_NET") or defaults.NET


class TestHost:
    """One systemd-nspawn test host. ``name`` and ``net`` (a /30) must be unique among live hosts."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        name: str = DEFAULT_NAME,
        net: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ):
        self.name = name
        self.net = net or DEFAULT_NET
        self.spec = Host.from_env(name=name, net=self.net, state_root=state_dir)
        self.state_root = self.spec.state_root
        self.dir = self.spec.dir
        self.inventory = self.spec.inventory
        self.ssh_config = self.spec.ssh_config
        self.key = self.spec.key
        self.ip: str | None = None

    def up(self) -> TestHost:
        """Boot the host (idempotent); a first run also builds the cached rootfs (about a minute)."""
        self.ip = lifecycle.up(self.spec).ct_ip
        return self

    def down(self) -> None:
        lifecycle.down(self.spec)

    def is_up(self) -> bool:
        return lifecycle.status(self.spec)[0] == 0

    def status(self) -> str:
        return lifecycle.status(self.spec)[1]

    # -- the host ---------------------------------------------------------------------------------

    def ssh_args(self) -> list[str]:
        return ssh_command(self.ssh_config, connect_timeout=5)

    def run(
        self, cmd: str | Sequence[str], check: bool = False, timeout: float = 300, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command in the host as root over SSH (a list is quoted for the remote shell)."""
        remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
        stdin: dict[str, Any] = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
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


