"""The test host's defaults, in one place.

Everything that reads a default (``scripts/testhost``, the ``TestHost`` wrapper and so ``./aibox``
up/down/converge/verify, the provisioning tests) reads it from here; the environment overrides it:

    AIBOX_TESTHOST_NAME    NAME           AIBOX_TESTHOST_CACHE   $AIBOX_CACHE/testhost
    AIBOX_TESTHOST_NET     NET            AIBOX_TESTHOST_MIRROR  this machine's apt mirror
    AIBOX_TESTHOST_STATE   STATE_ROOT     AIBOX_TESTHOST_SUITE   SUITE
    AIBOX_CACHE            CACHE_ROOT
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
#: The command line entry point, named in hints such as "clean up: scripts/testhost down --name X".
SCRIPT = REPO_ROOT / "scripts" / "testhost"

#: The default host, "the aibox in a box" (./aibox up), and its private /30.
NAME = "aibox-box"
NET = "10.231.91.0/30"

STATE_ROOT = Path("/var/lib/aibox-testhost")
#: The project's cache root (also holds the local model); the rootfs tarball goes under testhost/.
CACHE_ROOT = Path("/var/cache/aibox")
SUITE = "bookworm"
#: debootstrap --variant=minbase --include=...: systemd as PID 1, sshd, and what Ansible needs.
INCLUDE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-venv", "iproute2",
    "ca-certificates", "sudo", "cron", "procps",
)

#: The host name inside every test host, and its name in the inventory and ssh_config.
CONTAINER_HOSTNAME = "aibox"
SSH_TIMEOUT_S = 60
BOOT_TIMEOUT_S = 90
