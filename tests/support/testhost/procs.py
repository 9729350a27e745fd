"""Finding and ending the container's processes through /proc, with every PID checked before use.

PID files can be stale (the PID reused by an unrelated process after a reboot or a crash) or lost, so
nothing is signalled on the word of a PID file alone: nspawn must be a systemd-nspawn whose command
line names our rootfs, and the container's init must have our rootfs as its root directory.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

_PROC = Path("/proc")


def read_pidfile(path: Path) -> int | None:
    """The PID in PATH (digits only, as written), or None when the file is missing or holds none."""
    try:
        digits = "".join(ch for ch in path.read_text() if ch.isdigit())
    except OSError:
        return None
    return int(digits) if digits else None


def all_pids() -> Iterator[int]:
    for entry in os.listdir(_PROC):
        if entry.isdigit():
            yield int(entry)


def _status_fields(pid: int) -> dict[str, str]:
    try:
        text = (_PROC / str(pid) / "status").read_text()
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def alive(pid: int | None) -> bool:
    """Exists and is not a zombie (an nspawn that exited but whose parent has not reaped it yet is gone
    for our purposes)."""
    if not pid:
        return False
    state = _status_fields(pid).get("State", "").split()
    return bool(state) and state[0] != "Z"


def is_our_nspawn(pid: int | None, rootfs: Path) -> bool:
    """PID is a live systemd-nspawn running ROOTFS (a zombie has an empty command line: not ours)."""
    if not pid:
        return False
    try:
        if (_PROC / str(pid) / "comm").read_text().strip() != "systemd-nspawn":
            return False
        argv = (_PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.fsencode(rootfs) in argv


def rootfs_id(rootfs: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(rootfs)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def root_id(pid: int) -> tuple[int, int] | None:
    """Device and inode of PID's root directory. readlink(/proc/PID/root) says "/" across mount
    namespaces, so the container's processes are recognised by what their root *is*, not its name."""
    try:
        st = os.stat(_PROC / str(pid) / "root")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def is_in_rootfs(pid: int | None, rootfs: Path) -> bool:
    want = rootfs_id(rootfs)
    return bool(pid) and want is not None and root_id(pid) == want


def pids_in_rootfs(rootfs: Path) -> list[int]:
    """Every process whose root is ROOTFS (what is left when nspawn crashed or was killed)."""
    want = rootfs_id(rootfs)
    if want is None:
        return []
    return [pid for pid in all_pids() if root_id(pid) == want]


def children(pid: int) -> list[int]:
    return [child for child in all_pids() if _status_fields(child).get("PPid", "").strip() == str(pid)]


def is_namespace_init(pid: int) -> bool:
    """PID 1 of a nested PID namespace: its NSpid line lists more than one PID and ends in 1."""
    nspids = _status_fields(pid).get("NSpid", "").split()
    return len(nspids) > 1 and nspids[-1] == "1"


def find_init_pid(nspawn_pid: int) -> int | None:
    """The container's init: the child of nspawn that is PID 1 in its own namespace."""
    return next((child for child in children(nspawn_pid) if is_namespace_init(child)), None)


def our_nspawn_pids(rootfs: Path) -> list[int]:
    """All systemd-nspawn processes running ROOTFS (finds them when the PID file is lost)."""
    return [pid for pid in all_pids() if is_our_nspawn(pid, rootfs)]


def holds_open(pid: int, path: Path) -> bool:
    """PID has PATH open (an nspawn started by the bash version of scripts/testhost inherited its lock)."""
    fd_dir = _PROC / str(pid) / "fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd_dir / fd) == str(path):
                return True
        except OSError:
            continue
    return False


def wait_gone(seconds: float, pids: Iterable[int]) -> bool:
    pids = list(pids)
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def kill_and_wait(sig: signal.Signals, seconds: float, pids: Iterable[int]) -> bool:
    """Send SIG to each of PIDS and wait until all are gone; False if some outlived SECONDS."""
    pids = list(pids)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return wait_gone(seconds, pids)


def mounts_under(directory: Path, mounts_text: str) -> list[str]:
    """Mount points at or below DIRECTORY in a /proc/self/mounts text, deepest first (unmount order).
    The kernel writes space, tab, newline and backslash in mount points as octal escapes."""
    prefix = str(directory)
    points = []
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        point = _unescape_mount_point(fields[1])
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, reverse=True)


def _unescape_mount_point(field: str) -> str:
    for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, char)
    return field
