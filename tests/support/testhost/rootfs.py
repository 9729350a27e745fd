"""The Debian root filesystem: a cached tarball built once with debootstrap, and a prepared copy per host."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support import apt_sources
from tests.support.testhost import defaults
from tests.support.testhost.spec import Host, Net
from tests.support.testhost.tools import PROG, Stopwatch, TestHostError, log, run, tool_env

NET_UNIT = "aibox-testhost-net.service"


def host_mirror(host: Host) -> str:
    """AIBOX_TESTHOST_MIRROR, else the Debian mirror this machine's apt uses (no mirror is written down)."""
    if host.mirror:
        return host.mirror
    uri = apt_sources.mirror()
    if uri is None:
        raise TestHostError(
            f"cannot find a Debian mirror: no archive URI in {apt_sources.APT_DIR}/sources.list.d/*.sources"
            f" or {apt_sources.APT_DIR}/sources.list; set AIBOX_TESTHOST_MIRROR to a Debian mirror URL"
        )
    return uri


def remove_tree(path: Path) -> None:
    """rm -rf that stays on PATH's file system: a failed debootstrap or a crashed container can leave
    /proc or /sys mounted inside, and their contents must never be deleted through the mount."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def ensure_rootfs_tarball(host: Host) -> Path:
    """The cached ``<suite>-rootfs.tar``; built with debootstrap when missing (about a minute)."""
    tarball = host.tarball
    if _nonempty(tarball):
        return tarball
    host.cache_dir.mkdir(parents=True, exist_ok=True)
    # One build at a time per cache: two hosts coming up together wait for the first build.
    with open(host.cache_dir / ".build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for the rootfs build lock ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not _nonempty(tarball):  # built by the run we waited for
            _build_tarball(host)
    return tarball


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _build_tarball(host: Host) -> None:
    mirror = host_mirror(host)
    build = Path(tempfile.mkdtemp(prefix="build.", dir=host.cache_dir))
    debootstrap_log = host.cache_dir / "debootstrap.log"
    clock = Stopwatch()
    log(f"no cached rootfs at {host.tarball}; building one with debootstrap ({host.suite}, minbase)"
        " -- about a minute on a fresh machine")
    log(f"debootstrap log: {debootstrap_log}")
    try:
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(defaults.INCLUDE_PACKAGES)}",
               host.suite, str(build / "rootfs"), mirror]
        status = _run_logged(cmd, debootstrap_log, prefix=f"{PROG}: debootstrap: ")
        # debootstrap can exit 0 with a half-made tree (e.g. an --include package missing from the mirror).
        if status != 0 or not os.access(build / "rootfs" / "usr" / "bin" / "python3", os.X_OK):
            raise TestHostError(f"debootstrap failed; see {debootstrap_log}")
        log(f"packing {host.tarball} ...")
        run(["tar", "--numeric-owner", "-C", str(build / "rootfs"), "-cf", str(build / "rootfs.tar"), "."],
            timeout=None)
        # Renamed into place only when complete: an interrupted build never leaves a truncated tarball.
        os.replace(build / "rootfs.tar", host.tarball)
    finally:
        remove_tree(build)
    log(f"rootfs tarball ready in {clock} s")


def _run_logged(cmd: list[str], log_path: Path, prefix: str) -> int:
    """Run CMD, its output both into LOG_PATH and, line by line with PREFIX, onto our stderr (progress)."""
    with open(log_path, "w") as logfile, subprocess.Popen(
        cmd, env=tool_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            logfile.write(line)
            logfile.flush()
            sys.stderr.write(prefix + line)
            sys.stderr.flush()
    return proc.returncode


def net_unit_text(net: Net) -> str:
    """A oneshot unit that puts the static address and default route on host0 before sshd starts."""
    return f"""[Unit]
Description=aibox test host: static address on host0
DefaultDependencies=no
After=sys-subsystem-net-devices-host0.device
Before=network.target network-online.target ssh.service
Wants=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/ip link set lo up
ExecStart=/usr/sbin/ip link set host0 up
ExecStart=/usr/sbin/ip addr replace {net.ct_ip}/30 dev host0
ExecStart=/usr/sbin/ip route replace default via {net.host_ip} dev host0

[Install]
WantedBy=multi-user.target network-online.target
"""


def hosts_with_hostname(hosts: str, hostname: str) -> str:
    """/etc/hosts with a 127.0.1.1 line for HOSTNAME unless the word already appears in it."""
    if re.search(rf"(?<![\w]){re.escape(hostname)}(?![\w])", hosts):
        return hosts
    if hosts and not hosts.endswith("\n"):
        hosts += "\n"
    return hosts + f"127.0.1.1\t{hostname}\n"


def prepare_rootfs(host: Host, net: Net, tarball: Path) -> None:
    """Extract a fresh copy of TARBALL for this host and make it bootable and reachable."""
    rootfs = host.rootfs
    log(f"extracting {tarball} -> {rootfs}")
    rootfs.mkdir(parents=True, exist_ok=True)
    run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(rootfs)], timeout=None)

    # Per-host client key (kept across down/up), authorized for root.
    if not host.key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"aibox-testhost-{host.name}", "-f",
             str(host.key)])
    elif not host.key.with_suffix(".pub").exists():  # the public half lost: derive it again
        public = run(["ssh-keygen", "-y", "-f", str(host.key)]).stdout
        host.key.with_suffix(".pub").write_text(public)
    ssh_dir = rootfs / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    authorized = ssh_dir / "authorized_keys"
    shutil.copyfile(host.key.with_suffix(".pub"), authorized)
    authorized.chmod(0o600)

    # sshd host keys (only the missing ones).
    run(["ssh-keygen", "-A", "-f", str(rootfs)])

    # DNS: a plain copy of this machine's resolver config (the rootfs may have a link there).
    resolv = rootfs / "etc" / "resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)  # follows a symlinked /etc/resolv.conf, like cp -L
    resolv.chmod(0o644)

    _trust_local_cas(rootfs)

    # Identity: hostname, and a fresh machine-id per host (minbase leaves it empty or absent).
    (rootfs / "etc" / "hostname").write_text(defaults.CONTAINER_HOSTNAME + "\n")
    etc_hosts = rootfs / "etc" / "hosts"
    current = etc_hosts.read_text() if etc_hosts.exists() else ""
    etc_hosts.write_text(hosts_with_hostname(current, defaults.CONTAINER_HOSTNAME))
    (rootfs / "etc" / "machine-id").write_text("")

    # Static network on host0, before sshd and network-online.target; sshd enabled.
    units = rootfs / "etc" / "systemd" / "system"
    (units / NET_UNIT).write_text(net_unit_text(net))
    for target in ("multi-user.target", "network-online.target"):
        _force_symlink(units / f"{target}.wants" / NET_UNIT, Path("/etc/systemd/system") / NET_UNIT)
    _force_symlink(units / "multi-user.target.wants" / "ssh.service", Path("/lib/systemd/system/ssh.service"))


def _trust_local_cas(rootfs: Path, ca_dir: Path = Path("/usr/local/share/ca-certificates")) -> None:
    """Trust the same local CAs as this machine (e.g. a TLS-inspecting egress proxy); without them HTTPS
    (pip) from the container fails verification. They go into the container's ca-certificates dir too, so
    an update-ca-certificates run there keeps them."""
    bundle = rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt"
    for crt in sorted(ca_dir.glob("*.crt")):
        if not crt.is_file():
            continue
        target = rootfs / "usr" / "local" / "share" / "ca-certificates" / crt.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(crt, target)
        target.chmod(0o644)
        bundle.parent.mkdir(parents=True, exist_ok=True)
        with open(bundle, "ab") as out:
            out.write(crt.read_bytes())


def _force_symlink(link: Path, target: Path) -> None:
    """ln -sf: replace whatever is at LINK (the target is a path in the container: it may not exist here)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)
