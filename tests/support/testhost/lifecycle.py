"""``up``, ``down`` and ``status`` of one test host: the order of the steps, and the stale state each handles.

``up`` is idempotent and cleans up whatever an interrupted or failed earlier ``up`` left; ``down`` works
on any such state and touches only what ``up`` creates: processes of our nspawn or in our rootfs, our
veth, our nft table, mounts under our rootfs and files under our state directory.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO

from tests.support.testhost import defaults, network, procs
from tests.support.testhost.access import ssh_command, write_access_files
from tests.support.testhost.rootfs import ensure_rootfs_tarball, prepare_rootfs, remove_tree
from tests.support.testhost.spec import Host, Net
from tests.support.testhost.tools import (
    PROG,
    Stopwatch,
    TestHostError,
    ensure_packages,
    log,
    require_root,
    run,
    succeeds,
    tool_env,
)

#: nspawn processes this Python process started (``up`` called in-process by TestHost): ``down`` reaps
#: them, so a long-lived caller such as pytest collects no zombies.
_started: dict[Path, subprocess.Popen[bytes]] = {}


# -- locking ---------------------------------------------------------------------------------------


def _try_flock(lockfile: IO[str], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)


@contextmanager
def host_lock(host: Host) -> Iterator[None]:
    """One ``up``/``down`` per host name at a time (the lock file is not inherited by nspawn)."""
    host.state_root.mkdir(parents=True, exist_ok=True)
    with open(host.lockfile, "a") as lockfile:
        if not _try_flock(lockfile, 0):
            log(f"waiting for another '{PROG}' run on '{host.name}' ...")
            while not _try_flock(lockfile, 2):
                # An nspawn started by the bash version of this script inherited the lock fd and holds it
                # for its lifetime: that is not a concurrent run.
                holder = next((pid for pid in procs.our_nspawn_pids(host.rootfs)
                               if procs.holds_open(pid, host.lockfile)), None)
                if holder is not None:
                    log(f"lock is held by the container's own nspawn (PID {holder}); proceeding")
                    break
        yield


# -- queries ---------------------------------------------------------------------------------------


def _exists(path: Path) -> bool:
    """Like ``test -e``: a path we may not look at (status as a non-root user) does not exist."""
    try:
        return path.exists()
    except OSError:
        return False


def is_up(host: Host) -> bool:
    """Up = our nspawn runs and ``up`` got to the end (an interrupted ``up`` is not up)."""
    return procs.is_our_nspawn(procs.read_pidfile(host.nspawn_pidfile), host.rootfs) and _exists(host.ready)


def _systemd_state(host: Host, *, wait_s: float | None = None) -> str:
    """``systemctl is-system-running`` in the host ('' when SSH does not answer in time)."""
    remote = ["systemctl", "is-system-running", *(["--wait"] if wait_s else [])]
    try:
        return run(ssh_command(host.ssh_config, *remote), check=False, timeout=wait_s or 30).stdout.strip()
    except subprocess.TimeoutExpired:
        return ""


def adopt_if_complete(host: Host, net: Net) -> None:
    """A host booted without a ready marker (by an earlier version of this script, or an ``up``
    interrupted after its last step) counts as up if everything ``up`` sets up is in place and systemd
    answers over SSH."""
    if _exists(host.ready) or not _exists(host.netfile) or not _exists(host.ssh_config):
        return
    if not procs.is_our_nspawn(procs.read_pidfile(host.nspawn_pidfile), host.rootfs):
        return
    if not network.nft_table_exists(net.nft_table):
        return
    addresses = run(["ip", "-4", "-o", "addr", "show", "dev", net.veth], check=False).stdout
    if net.veth not in network.interfaces_with_address(net.host_ip, addresses):
        return
    if _systemd_state(host) in ("running", "degraded"):
        _mark_ready(host)


def _mark_ready(host: Host) -> None:
    host.ready.write_text(datetime.now().astimezone().isoformat(timespec="seconds") + "\n")


def status(host: Host) -> tuple[int, str]:
    """(0, a description) when up; (3, what is there instead, with any leftovers) when not."""
    net = host.current_net()
    adopt_if_complete(host, net)
    if is_up(host):
        state = _systemd_state(host) or "unreachable over SSH"
        return 0, (
            f"{host.name}: up\n"
            f"  nspawn PID: {procs.read_pidfile(host.nspawn_pidfile)},"
            f" init PID: {procs.read_pidfile(host.init_pidfile)}\n"
            f"  ip:         {net.ct_ip} (host side {net.host_ip} on {net.veth}, net {net.cidr})\n"
            f"  systemd:    {state}\n"
            f"  nft table:  ip {net.nft_table}\n"
            f"  inventory:  {host.inventory}\n"
            f"  ssh_config: {host.ssh_config}\n"
        )
    leftovers = []
    nspawn_pid = procs.read_pidfile(host.nspawn_pidfile)
    if procs.is_our_nspawn(nspawn_pid, host.rootfs):
        text = f"{host.name}: not ready (nspawn runs but 'up' did not finish)\n"
        leftovers.append(f"nspawn PID {nspawn_pid}")
    else:
        text = f"{host.name}: down\n"
    if _exists(host.rootfs):
        leftovers.append(f"rootfs {host.rootfs}")
    if network.link_exists(net.veth):
        leftovers.append(f"veth {net.veth}")
    if network.nft_table_exists(net.nft_table):
        leftovers.append(f"nft table ip {net.nft_table}")
    if procs.pids_in_rootfs(host.rootfs):
        leftovers.append("processes in rootfs")
    if leftovers:
        text += f"  leftovers: {' '.join(leftovers)}  (run: {defaults.SCRIPT} down --name {host.name})\n"
    return 3, text


def require_up(host: Host) -> None:
    if not is_up(host):
        raise TestHostError(f"'{host.name}' is not up (run: {defaults.SCRIPT} up --name {host.name})")


# -- up --------------------------------------------------------------------------------------------


def up(host: Host) -> Net:
    """Boot the host (idempotent); returns its network."""
    require_root("up")
    planned = host.planned_net()
    with host_lock(host):
        recorded = host.recorded_net()
        if recorded is not None:
            adopt_if_complete(host, recorded)
        if is_up(host):
            net = recorded or planned
            log(f"'{host.name}' is already up (nspawn PID {procs.read_pidfile(host.nspawn_pidfile)},"
                f" {net.ct_ip})")
            return net
        other = network.net_in_use_by(host.state_root, host.dir, planned)
        if other is not None:
            raise TestHostError(f"{planned.cidr} is in use by test host '{other}';"
                                " set AIBOX_TESTHOST_NET to another /30")
        if _has_stale_state(host):
            log(f"stale state for '{host.name}' found; cleaning it up first")
            teardown(host, recorded)
        taken_by = network.configured_on_this_machine(planned.host_ip)
        if taken_by:
            raise TestHostError(f"{planned.host_ip} is already configured on this machine"
                                f" ({' '.join(taken_by)}); choose another AIBOX_TESTHOST_NET")
        _bring_up(host, planned)
        return planned


def _has_stale_state(host: Host) -> bool:
    return (
        host.rootfs.exists() or host.rootfs.is_symlink()
        or host.nspawn_pidfile.exists()
        or host.netfile.exists()
        or bool(procs.our_nspawn_pids(host.rootfs))
        or network.link_exists(host.veth)
        or network.nft_table_exists(host.nft_table)
    )


def _bring_up(host: Host, net: Net) -> None:
    total = Stopwatch()
    ensure_packages()
    tarball = ensure_rootfs_tarball(host)
    host.dir.mkdir(parents=True, exist_ok=True)
    host.dir.chmod(0o700)  # holds the client key
    # Recorded first: a down after a failure anywhere below finds the names it has to remove.
    host.netfile.write_text(net.env_text())
    prepare_rootfs(host, net, tarball)
    write_access_files(host, net)

    boot = Stopwatch()
    proc = _start_nspawn(host, net)
    init_pid = _wait_for_init_and_veth(host, net, proc)
    host.init_pidfile.write_text(f"{init_pid}\n")
    log(f"nspawn PID {proc.pid}, container init PID {init_pid}, veth {net.veth}")

    network.address_host_side(net)
    network.enable_forwarding(host.state_root)
    network.setup_nat(net)
    log(f"network: host {net.host_ip} <-> container {net.ct_ip} ({net.cidr}),"
        f" NAT via nft table ip {net.nft_table}")

    log(f"waiting for SSH on {net.ct_ip} (timeout {defaults.SSH_TIMEOUT_S}s) ...")
    _wait_for_ssh(host, net, proc)
    to_ssh = str(boot)
    log(f"SSH answers {to_ssh}s after boot start")
    _wait_for_systemd(host)
    _mark_ready(host)
    log(f"'{host.name}' is up: boot-to-SSH {to_ssh}s, total {total}s")


def _start_nspawn(host: Host, net: Net) -> subprocess.Popen[bytes]:
    log(f"booting '{host.name}' (systemd-nspawn, log: {host.nspawn_log})")
    if host.nspawn_log.is_file() and host.nspawn_log.stat().st_size > 0:
        host.nspawn_log.replace(host.nspawn_log.with_name("nspawn.log.prev"))
    with open(host.nspawn_log, "wb") as console:
        proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "-D", str(host.rootfs), "--boot", f"--machine={host.name}",
             f"--hostname={defaults.CONTAINER_HOSTNAME}", f"--network-veth-extra={net.veth}:host0",
             "--register=no", "--keep-unit", "--console=passive", "--resolv-conf=off", "--timezone=off",
             "--link-journal=no"],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, env=tool_env(),
            # Its own session, so the caller's terminal and job control cannot signal it; cwd / so it
            # pins no directory of the caller's. close_fds (the default) keeps our lock fd out of it.
            start_new_session=True, cwd="/",
        )
    _started[host.rootfs] = proc
    host.nspawn_pidfile.write_text(f"{proc.pid}\n")
    return proc


def _nspawn_died(host: Host, proc: subprocess.Popen[bytes], what: str) -> TestHostError:
    try:
        tail = host.nspawn_log.read_text(errors="replace").splitlines()[-30:]
    except OSError:
        tail = []
    sys.stderr.write("".join(line + "\n" for line in tail))
    return TestHostError(f"systemd-nspawn exited {what} (exit {proc.returncode}); see {host.nspawn_log}")


def _cleanup_hint(host: Host) -> str:
    return f"(clean up: {defaults.SCRIPT} down --name {host.name})"


def _wait_for_init_and_veth(host: Host, net: Net, proc: subprocess.Popen[bytes]) -> int:
    init_pid = None
    for _ in range(100):  # 10 s
        if proc.poll() is not None:
            raise _nspawn_died(host, proc, "during boot")
        init_pid = init_pid or procs.find_init_pid(proc.pid)
        if init_pid and network.link_exists(net.veth):
            return init_pid
        time.sleep(0.1)
    if not init_pid:
        raise TestHostError(f"container init did not appear; see {host.nspawn_log} {_cleanup_hint(host)}")
    raise TestHostError(f"veth {net.veth} did not appear; see {host.nspawn_log} {_cleanup_hint(host)}")


def _wait_for_ssh(host: Host, net: Net, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + defaults.SSH_TIMEOUT_S
    while not succeeds(ssh_command(host.ssh_config, "true"), timeout=30):
        if proc.poll() is not None:
            raise _nspawn_died(host, proc, "before SSH answered")
        if time.monotonic() >= deadline:
            raise TestHostError(f"no SSH on {net.ct_ip} after {defaults.SSH_TIMEOUT_S}s;"
                                f" see {host.nspawn_log} {_cleanup_hint(host)}")
        time.sleep(0.2)


def _wait_for_systemd(host: Host) -> None:
    state = _systemd_state(host, wait_s=defaults.BOOT_TIMEOUT_S)
    if state == "running":
        log("systemd: running")
    elif state == "degraded":
        log("systemd: degraded; failed units:")
        failed = run(ssh_command(host.ssh_config, "systemctl", "--failed", "--no-legend", "--plain"),
                     check=False, timeout=30).stdout
        for line in failed.splitlines():
            log(f"  {line}")
    else:
        raise TestHostError(f"systemd did not finish booting (state: '{state or 'timeout'}');"
                            f" see {host.nspawn_log}")


# -- down ------------------------------------------------------------------------------------------


def down(host: Host) -> None:
    require_root("down")
    with host_lock(host):
        clock = Stopwatch()
        log(f"tearing down '{host.name}'")
        teardown(host, host.recorded_net())
        log(f"'{host.name}' is down ({clock}s)")


def teardown(host: Host, recorded: Net | None) -> None:
    """Idempotent; works on whatever a failed or finished ``up`` left behind."""
    _stop_container(host)
    _remove_network(host, recorded)
    _remove_files(host)


def _stop_container(host: Host) -> None:
    rootfs = host.rootfs
    # Our nspawn(s): from the PID file, or found by rootfs path if that was lost.
    recorded_pid = procs.read_pidfile(host.nspawn_pidfile)
    nspawn_pids = [recorded_pid] if recorded_pid and procs.is_our_nspawn(recorded_pid, rootfs) else []
    nspawn_pids += [pid for pid in procs.our_nspawn_pids(rootfs) if pid not in nspawn_pids]

    # SIGKILL to the container's init ends its whole PID namespace; nspawn then cleans up (veth, mounts)
    # and exits by itself. SIGTERM to nspawn is not reliable.
    init_pid = procs.read_pidfile(host.init_pidfile)
    if init_pid and procs.is_in_rootfs(init_pid, rootfs):
        log(f"killing container init (PID {init_pid})")
        if not procs.kill_and_wait(signal.SIGKILL, 10, [init_pid]):
            log(f"warning: init PID {init_pid} still alive")
    for nspawn_pid in nspawn_pids:  # init PID file lost or stale: find init as nspawn's child
        if not procs.alive(nspawn_pid):
            continue
        init_pid = procs.find_init_pid(nspawn_pid)
        if init_pid and procs.alive(init_pid):
            log(f"killing container init (PID {init_pid})")
            procs.kill_and_wait(signal.SIGKILL, 10, [init_pid])
    if nspawn_pids and not procs.wait_gone(10, nspawn_pids):
        log(f"stopping systemd-nspawn (PID {' '.join(map(str, nspawn_pids))})")
        if not (procs.kill_and_wait(signal.SIGTERM, 5, nspawn_pids)
                or procs.kill_and_wait(signal.SIGKILL, 5, nspawn_pids)):
            log(f"warning: systemd-nspawn {' '.join(map(str, nspawn_pids))} still alive")
    # Anything still running in our rootfs (e.g. after a crashed nspawn).
    stragglers = procs.pids_in_rootfs(rootfs)
    if stragglers:
        log(f"killing {len(stragglers)} leftover process(es) in {rootfs}")
        if not procs.kill_and_wait(signal.SIGKILL, 5, stragglers):
            log(f"warning: processes in {rootfs} still alive")
    _reap_started(rootfs)


def _reap_started(rootfs: Path) -> None:
    """Collect the exit status of an nspawn this process started, so it does not linger as a zombie."""
    proc = _started.get(rootfs)
    if proc is None:
        return
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return  # still running (warned above); a later down tries again
    del _started[rootfs]


def _remove_network(host: Host, recorded: Net | None) -> None:
    # Names derive from the host's name; net.env (older runs) may name others: remove both.
    veths = dict.fromkeys([host.veth, *([recorded.veth] if recorded else [])])
    tables = dict.fromkeys([host.nft_table, *([recorded.nft_table] if recorded else [])])
    for veth in veths:  # normally gone with the container's network namespace
        if network.link_exists(veth):
            log(f"deleting leftover veth {veth}")
            if run(["ip", "link", "delete", veth], check=False).returncode != 0:
                log(f"warning: could not delete {veth}")
    for table in tables:
        if network.nft_table_exists(table):
            log(f"deleting nft table ip {table}")
            run(["nft", "delete", "table", "ip", table])
    network.restore_forwarding(host.state_root, host.dir)
    # nspawn's per-machine propagation dir (normally removed by nspawn itself).
    try:
        os.rmdir(f"/run/systemd/nspawn/propagate/{host.name}")
    except OSError:
        pass


def _remove_files(host: Host) -> None:
    rootfs = host.rootfs
    if rootfs.is_dir():
        # Mounts under the rootfs first (deepest first), then the rootfs itself.
        for mount_point in procs.mounts_under(rootfs, Path("/proc/self/mounts").read_text()):
            log(f"unmounting leftover {mount_point}")
            run(["umount", "-l", mount_point], check=False)
        log(f"removing {rootfs}")
        remove_tree(rootfs)
    for path in (host.ready, host.nspawn_pidfile, host.init_pidfile, host.netfile, host.ssh_config,
                 host.inventory, host.inventory_dir / "group_vars"):
        path.unlink(missing_ok=True)
    try:
        host.inventory_dir.rmdir()
    except OSError:
        pass
    # The client key and nspawn.log (with nspawn.log.prev) stay: useful after a failed up.
