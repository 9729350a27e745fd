"""Running the real tools (ip, nft, ssh, tar, ...) and reporting progress, the way every step does it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence

PROG = "testhost"

#: Debian keeps ip, nft, sysctl and debootstrap in sbin, which a non-login root shell may not have on PATH.
_SBIN = ("/usr/sbin", "/sbin")

#: command -> the Debian package that provides it; ``up`` and ``rootfs`` install the missing ones.
NEEDED_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "nft": "nftables",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


class TestHostError(RuntimeError):
    """A test host step failed; the message says what, and how to clean up where that matters."""

    __test__ = False  # not a pytest test class despite the name


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PATH", "")
    env["PATH"] = os.pathsep.join([path, *(d for d in _SBIN if d not in path.split(os.pathsep))])
    return env


def run(
    cmd: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float | None = 120
) -> subprocess.CompletedProcess[str]:
    """Run CMD with output captured; with ``check``, a failure raises with the tool's own message."""
    result = subprocess.run(
        list(cmd), env=tool_env(), input=input, stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise TestHostError(f"{' '.join(cmd)} failed (exit {result.returncode}): {detail}")
    return result


def succeeds(cmd: Sequence[str], timeout: float | None = 60) -> bool:
    """True if CMD exits 0 (a query such as ``ip link show X``; its output is not wanted)."""
    try:
        return subprocess.run(list(cmd), env=tool_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def run_to_stderr(cmd: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run CMD with its output on our stderr (fd 2, so it streams even under pytest's fd capture)."""
    sys.stderr.flush()
    return subprocess.run(list(cmd), env=env or tool_env(), stdin=subprocess.DEVNULL, stdout=2, stderr=2,
                          check=False).returncode


def require_root(command: str) -> None:
    if os.geteuid() != 0:
        raise TestHostError(f"'{command}' needs root")


def ensure_packages() -> None:
    """apt-get install whatever of NEEDED_TOOLS is missing (an outdated package list: update, retry)."""
    path = tool_env()["PATH"]
    missing = sorted({pkg for cmd, pkg in NEEDED_TOOLS.items() if shutil.which(cmd, path=path) is None})
    if not missing:
        return
    log(f"installing missing packages: {' '.join(missing)}")
    env = {**tool_env(), "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", *missing]
    if run_to_stderr(install, env) != 0 and (run_to_stderr(["apt-get", "update"], env) != 0
                                             or run_to_stderr(install, env) != 0):
        raise TestHostError(f"could not install {' '.join(missing)} with apt-get (see above)")


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __str__(self) -> str:
        return f"{time.monotonic() - self.started:.1f}"
