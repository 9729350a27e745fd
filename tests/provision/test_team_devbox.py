"""The pyinfra team deploy pushed over SSH, as an admin runs it, to a developer machine: a real
systemd-nspawn Debian host (scripts/testhost) with an OS user ``alice`` who already has her own
Claude Code settings. The inventory is deploy/inventory.py over a team.yml naming that machine.

Run it under the provisioning lock (docs/testhost.md):
    flock /tmp/aibox-provision.lock .venv/bin/python -m pytest -q -p no:cacheprovider \
        tests/provision/test_team_devbox.py
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.team_deploy import TeamDir, run_pyinfra
from tests.support.testhost import TestHost

NAME = "aibox-devbox"
NET = "10.231.93.0/30"
KEY = "alice-key-0123456789abcdefghij"
ALICE_SETTINGS = {"model": "sonnet", "env": {"EDITOR": "nano"}}
WRITTEN = {  # path under /home/alice -> mode the deploy gives it
    ".claude/settings.json": "600", ".claude/CLAUDE.md": "644", ".claude.json": "600",
    ".continue/config.yaml": "600", ".config/aibox/openai.env": "600",
}

pytestmark = [
    pytest.mark.provision,
    pytest.mark.timeout(900),  # a first run may build the rootfs tarball (~5 min)
    pytest.mark.skipif(os.geteuid() != 0, reason="the test host needs root (systemd-nspawn, veth, nftables)"),
]


@pytest.fixture(scope="module")
def devbox() -> Iterator[TestHost]:
    host = TestHost(name=NAME, net=NET)
    if host.dir.joinpath("nspawn.pid").exists() or host.dir.joinpath("rootfs").exists():
        host.down()  # leftovers of an interrupted earlier run
    try:
        host.up()
        run = host.run("useradd --create-home --shell /bin/bash alice"
                       " && install -d -o alice -g alice /home/alice/.claude"
                       " && cat > /home/alice/.claude/settings.json"
                       " && chown alice:alice /home/alice/.claude/settings.json",
                       input=json.dumps(ALICE_SETTINGS))
        assert run.returncode == 0, run.stderr
        yield host
    finally:
        host.down()


def stat(host: TestHost, path: str) -> str | None:
    run = host.run(f"stat -c '%U %a' /home/alice/{path}")
    return run.stdout.strip() if run.returncode == 0 else None


def test_an_admin_onboards_and_offboards_a_machine_over_ssh(devbox: TestHost, tmp_path: Path) -> None:
    team = TeamDir(tmp_path, "http://10.231.93.1:8088")
    ssh = {"ssh_user": "root", "ssh_key": str(devbox.key), "ssh_known_hosts_file": "/dev/null",
           "ssh_strict_host_key_checking": "off"}
    team.write([{"name": "alice", "machine": devbox.ip, "user": "alice", "ssh": ssh, "daily_budget": 3.0}])
    team.credentials.mkdir()
    (team.credentials / "alice.key").write_text(KEY + "\n")

    first = run_pyinfra(team, "deploy/inventory.py")
    assert first.returncode == 0 and first.changed == 8, first.output  # 5 files, 3 new directories
    print(f"\nonboarding one developer machine over SSH: {first.seconds:.1f} s, {first.changed} changes")
    second = run_pyinfra(team, "deploy/inventory.py")
    assert second.returncode == 0 and second.changed == 0 and second.unchanged == 5, second.output
    print(f"re-run: {second.seconds:.1f} s, {second.changed} changes")

    for path, mode in WRITTEN.items():
        assert stat(devbox, path) == f"alice {mode}", path  # alice's, and the key files private
    for directory in (".claude", ".continue", ".config", ".config/aibox"):
        assert stat(devbox, directory).startswith("alice "), directory  # her tools can write there
    settings = json.loads(devbox.run("cat /home/alice/.claude/settings.json").stdout)
    assert settings["model"] == "sonnet" and settings["env"]["EDITOR"] == "nano"
    assert settings["env"]["ANTHROPIC_AUTH_TOKEN"] == KEY
    assert settings["env"]["ANTHROPIC_BASE_URL"] == "http://10.231.93.1:8088"
    assert f"OPENAI_API_KEY={KEY}" in devbox.run("cat /home/alice/.config/aibox/openai.env").stdout

    team.write([{"name": "alice", "machine": devbox.ip, "user": "alice", "ssh": ssh, "absent": True}])
    off = run_pyinfra(team, "deploy/inventory.py")
    assert off.returncode == 0 and off.changed > 0, off.output
    assert json.loads(devbox.run("cat /home/alice/.claude/settings.json").stdout) == ALICE_SETTINGS
    left = devbox.run("cd /home/alice && find .claude .claude.json .continue .config 2>/dev/null").stdout
    assert sorted(left.split()) == [".claude", ".claude/settings.json"]
    again = run_pyinfra(team, "deploy/inventory.py")
    assert again.returncode == 0 and again.changed == 0, again.output
