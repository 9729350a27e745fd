"""The systemd-nspawn test host itself (scripts/testhost): boots, SSH, routing, inventory, clean teardown.

Uses its own name and /30 so it can run next to a developer's `aibox-test` host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.support.testhost import REPO_ROOT, TestHost

NAME = "aibox-selftest"
NET = "10.231.89.0/30"
HOST_SIDE_IP = "10.231.89.1"
CONTAINER_IP = "10.231.89.2"

pytestmark = [
    pytest.mark.provision,
    pytest.mark.timeout(900),  # a first run builds the rootfs tarball with debootstrap (~5 min)
    pytest.mark.skipif(os.geteuid() != 0, reason="the test host needs root (systemd-nspawn, veth, nftables)"),
]


def alive(pid: int) -> bool:
    """Exists and is not a zombie (an exited process its reaper has not collected yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "Z")
    return state != "Z"


def sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=False, capture_output=True, text=True, timeout=60)


def read_env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.fixture(scope="module")
def host():
    h = TestHost(name=NAME, net=NET)
    if h.dir.joinpath("nspawn.pid").exists() or h.dir.joinpath("rootfs").exists():
        h.down()  # leftovers of an interrupted earlier run
    try:
        h.up()
        yield h
    finally:
        h.down()


def test_up_reports_address_and_files(host):
    assert host.ip == CONTAINER_IP
    assert host.inventory.is_file()
    assert host.ssh_config.is_file()
    assert host.is_up()


def test_systemd_is_pid1_and_running(host):
    assert host.run("cat /proc/1/comm").stdout.strip() == "systemd"
    r = host.run("systemctl is-system-running --wait", timeout=120)
    failed = host.run("systemctl --failed --no-legend --plain").stdout
    assert r.stdout.strip() == "running", f"state {r.stdout.strip()!r}; failed units:\n{failed}"


def test_ssh_as_root_on_host_named_aibox(host):
    r = host.run(["sh", "-c", "id -un; hostname"], check=True)
    assert r.stdout.split() == ["root", "aibox"]
    # the plain ssh_config works as documented (what testinfra uses)
    r = subprocess.run(
        ["ssh", "-F", str(host.ssh_config), "-o", "BatchMode=yes", "aibox", "true"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr


def test_default_route_via_host_side(host):
    r = host.run("ip -4 route show default", check=True)
    assert f"default via {HOST_SIDE_IP} dev host0" in r.stdout
    addr = host.run("ip -4 -o addr show dev host0", check=True).stdout
    assert f"{CONTAINER_IP}/30" in addr


def test_inventory_is_usable_by_ansible(host):
    inv = yaml.safe_load(host.inventory.read_text())
    hostvars = inv["all"]["children"]["aibox"]["hosts"]["aibox"]
    assert hostvars["ansible_host"] == CONTAINER_IP
    assert hostvars["ansible_user"] == "root"
    assert hostvars["ansible_python_interpreter"] == "/usr/bin/python3"
    assert Path(hostvars["ansible_ssh_private_key_file"]).is_file()
    link = host.inventory.parent / "group_vars"
    assert link.is_symlink()
    assert Path(os.readlink(link)) == REPO_ROOT / "inventory" / "group_vars"

    ansible = REPO_ROOT / ".venv" / "bin" / "ansible"
    if not ansible.exists():
        ansible = Path(shutil.which("ansible") or "")
    if not ansible.is_file():
        pytest.skip("ansible is not installed")
    r = subprocess.run(
        [str(ansible), "-i", str(host.inventory), "aibox", "-m", "ansible.builtin.ping"],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1"},
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0 and "SUCCESS" in r.stdout and "pong" in r.stdout, r.stdout + r.stderr


def test_down_leaves_nothing_behind(host):
    net = read_env_file(host.dir / "net.env")
    veth, table = net["VETH"], net["NFT_TABLE"]
    nspawn_pid = int((host.dir / "nspawn.pid").read_text())
    init_pid = int((host.dir / "init.pid").read_text())
    # before: all of it exists
    assert alive(nspawn_pid) and alive(init_pid)
    assert sh("ip", "link", "show", veth).returncode == 0
    assert sh("nft", "list", "table", "ip", table).returncode == 0

    host.down()

    assert not alive(nspawn_pid), "systemd-nspawn still running"
    assert not alive(init_pid), "container init still running"
    assert sh("ip", "link", "show", veth).returncode != 0, f"veth {veth} left over"
    assert sh("nft", "list", "table", "ip", table).returncode != 0, f"nft table {table} left over"
    assert not (host.dir / "rootfs").exists()
    leftover = sh("pgrep", "-f", f"{host.dir}/rootfs").stdout
    assert leftover == "", f"processes left: {leftover}"
    assert not host.is_up()
    host.down()  # idempotent: a second down is a no-op


def test_rootfs_builds_from_an_empty_cache(tmp_path, capsys):
    """A fresh machine has no cached rootfs: the build itself (debootstrap from this machine's apt
    mirror) must work, not only the extraction of a tarball an earlier run left behind."""
    cache = tmp_path / "empty-cache"
    env = {k: v for k, v in os.environ.items() if k not in ("AIBOX_TESTHOST_MIRROR",)}
    env["AIBOX_TESTHOST_CACHE"] = str(cache)
    started = time.monotonic()
    r = subprocess.run(
        [str(REPO_ROOT / "scripts" / "testhost"), "rootfs"],
        env=env, capture_output=True, text=True, timeout=900, check=False, stdin=subprocess.DEVNULL,
    )
    took = time.monotonic() - started
    with capsys.disabled():  # shown in CI's output: the figure a fresh machine pays once
        print(f"\n[testhost] rootfs built from an empty cache in {took:.0f} s (exit {r.returncode})")
    assert r.returncode == 0, r.stderr[-4000:]
    tarball = Path(r.stdout.strip())
    assert tarball.parent == cache and tarball.stat().st_size > 50 << 20
    listing = subprocess.run(["tar", "-tf", str(tarball)], capture_output=True, text=True, check=True).stdout
    members = set(listing.split())
    # Debian 12 merges /usr: systemd and sshd live under usr/ (lib and sbin are links into it).
    for needed in ("./usr/bin/python3", "./usr/sbin/sshd", "./usr/lib/systemd/systemd", "./usr/bin/crontab"):
        assert needed in members, f"{needed} missing from the fresh rootfs"
