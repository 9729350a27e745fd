"""The test host's pure parts, without root: command line, naming, /30 arithmetic, net.env, the rendered
inventory / ssh_config / unit, and the /proc and `ip` parsing that teardown and the conflict checks use.
(tests/provision/test_testhost.py boots a real one.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.support.testhost import cli, defaults, network, procs
from tests.support.testhost.access import inventory_text, ssh_command, ssh_config_text
from tests.support.testhost.rootfs import hosts_with_hostname, net_unit_text
from tests.support.testhost.spec import Host, Net, nft_table, veth_name
from tests.support.testhost.tools import TestHostError


def host(tmp_path: Path, name: str = "aibox-unit", net: str = "10.231.97.0/30") -> Host:
    return Host(name=name, net=net, state_root=tmp_path / "state", cache_dir=tmp_path / "cache")


# -- command line ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "command", "name", "rest"), [
    (["up"], "up", None, []),
    (["down", "--name", "aibox-b"], "down", "aibox-b", []),
    (["status", "--name=aibox-b"], "status", "aibox-b", []),
    (["ssh", "--name", "x1", "--", "systemctl", "status"], "ssh", "x1", ["systemctl", "status"]),
    (["ssh", "uname", "-a", "--name", "y"], "ssh", None, ["uname", "-a", "--name", "y"]),  # all remote
    (["ssh", "--", "--name"], "ssh", None, ["--name"]),
    (["ip", "--help"], "help", None, []),
    (["help"], "help", None, []),
])
def test_parse(argv, command, name, rest):
    inv = cli.parse(argv)
    assert (inv.command, inv.name, inv.rest) == (command, name, rest)


@pytest.mark.parametrize(("argv", "message"), [
    (["up", "--bogus"], "unknown argument '--bogus' for 'up'"),
    (["down", "--name"], "--name needs a value"),
    (["upp"], "unknown command 'upp'"),
])
def test_parse_errors(argv, message):
    with pytest.raises(TestHostError, match=message):
        cli.parse(argv)


def test_main_exit_codes_and_usage(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("AIBOX_TESTHOST_STATE", str(tmp_path))
    assert cli.main([]) == 2
    assert "scripts/testhost up" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert cli.main(["upp"]) == 1
    assert "unknown command 'upp'" in capsys.readouterr().err
    assert cli.main(["ip", "--name", "Bad_Name"]) == 1
    assert "invalid --name 'Bad_Name'" in capsys.readouterr().err
    # ip needs no root and no running host: the /30 asked for, or the one recorded by up
    monkeypatch.setenv("AIBOX_TESTHOST_NET", "10.231.97.4/30")
    assert cli.main(["ip", "--name", "aibox-unit"]) == 0
    assert capsys.readouterr().out == "10.231.97.6\n"
    recorded = tmp_path / "aibox-unit" / "net.env"
    recorded.parent.mkdir()
    recorded.write_text(Net.plan("10.231.98.0/30", "aibox-unit").env_text())
    assert cli.main(["ip", "--name", "aibox-unit"]) == 0
    assert capsys.readouterr().out == "10.231.98.2\n"
    # inventory and ssh want a host that is up
    assert cli.main(["inventory", "--name", "aibox-unit"]) == 1
    assert "'aibox-unit' is not up" in capsys.readouterr().err


# -- naming and the /30 ----------------------------------------------------------------------------


def test_net_plan_rounds_down_to_the_30():
    net = Net.plan("10.231.89.7/30", "aibox-selftest")
    assert (net.cidr, net.host_ip, net.ct_ip) == ("10.231.89.4/30", "10.231.89.5", "10.231.89.6")
    assert Net.plan(defaults.NET, defaults.NAME).ct_ip == "10.231.91.2"


@pytest.mark.parametrize(("net", "message"), [
    ("10.231.89.0/24", "must be an IPv4 /30"),
    ("10.231.89/30", "must be an IPv4 /30"),
    (" 10.231.89.0/30", "must be an IPv4 /30"),
    ("10.231.289.0/30", "bad octet"),
])
def test_net_plan_rejects(net, message):
    with pytest.raises(TestHostError, match=message):
        Net.plan(net, "x")


def test_veth_and_nft_names():
    assert veth_name("aibox-box") == "ve-aibox-box"
    assert veth_name("aibox-prov12") == "ve-aibox-prov12"  # 15: the kernel's limit, still fits
    assert veth_name("aibox-prov123") == "ve-aibox-pb8cde"
    assert veth_name("aibox-selftest") == "ve-aibox-sfc7b0"  # the example docs/testhost.md gives
    assert len(veth_name("a" * 40)) == 15
    assert veth_name("aibox-selftest-a") != veth_name("aibox-selftest-b")
    assert nft_table("aibox-box") == "aibox_testhost_aibox_box"


@pytest.mark.parametrize("name", ["", "-x", "Upper", "a_b", "a" * 41, "a/b", "a\n"])
def test_invalid_names(tmp_path, name):
    with pytest.raises(TestHostError, match="invalid --name"):
        host(tmp_path, name=name)


def test_net_env_round_trip_and_format(tmp_path):
    net = Net.plan("10.231.89.0/30", "aibox-selftest")
    text = net.env_text()
    assert text.splitlines() == ["NET_CIDR=10.231.89.0/30", "HOST_IP=10.231.89.1", "CT_IP=10.231.89.2",
                                 "VETH=ve-aibox-sfc7b0", "NFT_TABLE=aibox_testhost_aibox_selftest"]
    assert Net.from_env_text(text) == net
    h = host(tmp_path, name="aibox-selftest", net="10.231.95.0/30")
    assert h.recorded_net() is None and h.current_net().cidr == "10.231.95.0/30"
    h.dir.mkdir(parents=True)
    h.netfile.write_text(text)
    assert h.current_net() == net  # what up recorded wins over what is asked for now
    h.netfile.write_text("NET_CIDR=10.231.89.0/30\n")  # half-written: down must still work
    assert h.recorded_net() is None


def test_settings_precedence(tmp_path):
    env = {"AIBOX_TESTHOST_NAME": "from-env", "AIBOX_TESTHOST_NET": "10.231.96.0/30",
           "AIBOX_CACHE": str(tmp_path / "c"), "AIBOX_TESTHOST_SUITE": "trixie"}
    h = Host.from_env(env=env)
    assert (h.name, h.net, h.state_root, h.suite, h.mirror) == (
        "from-env", "10.231.96.0/30", defaults.STATE_ROOT, "trixie", None)
    assert h.tarball == tmp_path / "c" / "testhost" / "trixie-rootfs.tar"
    h = Host.from_env(name="arg", net="10.231.97.0/30", env={**env, "AIBOX_TESTHOST_CACHE": "/x",
                                                           "AIBOX_TESTHOST_MIRROR": "http://m/debian"})
    assert (h.name, h.net, h.cache_dir, h.mirror) == ("arg", "10.231.97.0/30", Path("/x"), "http://m/debian")
    h = Host.from_env(env={})
    assert (h.name, h.net, h.cache_dir) == (defaults.NAME, defaults.NET, defaults.CACHE_ROOT / "testhost")


# -- what up writes --------------------------------------------------------------------------------


def test_inventory_and_ssh_config(tmp_path):
    h = host(tmp_path)
    net = h.planned_net()
    inventory = yaml.safe_load(inventory_text(h, net))
    hostvars = inventory["all"]["children"]["aibox"]["hosts"]["aibox"]
    assert hostvars == {
        "ansible_host": "10.231.97.2",
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(h.key),
        "ansible_ssh_common_args":
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        "ansible_python_interpreter": "/usr/bin/python3",
    }
    config = ssh_config_text(h, net).splitlines()
    assert "Host aibox aibox-unit 10.231.97.2" in config
    assert {"    HostName 10.231.97.2", "    User root", f"    IdentityFile {h.key}",
            "    IdentitiesOnly yes", "    StrictHostKeyChecking no"} <= set(config)
    assert ssh_command(h.ssh_config, "true")[-2:] == ["aibox", "true"]
    assert "BatchMode=yes" in ssh_command(h.ssh_config)


def test_net_unit_and_etc_hosts():
    unit = net_unit_text(Net.plan("10.231.89.0/30", "x"))
    assert "ExecStart=/usr/sbin/ip addr replace 10.231.89.2/30 dev host0" in unit
    assert "ExecStart=/usr/sbin/ip route replace default via 10.231.89.1 dev host0" in unit
    assert "Before=network.target network-online.target ssh.service" in unit
    assert hosts_with_hostname("127.0.0.1\tlocalhost", "aibox") == "127.0.0.1\tlocalhost\n127.0.1.1\taibox\n"
    assert hosts_with_hostname("127.0.1.1 aibox\n", "aibox") == "127.0.1.1 aibox\n"  # not twice
    assert hosts_with_hostname("127.0.1.1 aibox-old\n", "aibox") == "127.0.1.1 aibox-old\n"  # grep -w
    assert hosts_with_hostname("127.0.1.1 aiboxes\n", "aibox").endswith("127.0.1.1\taibox\n")


def test_nat_touches_only_the_30():
    ruleset = network.nat_ruleset(Net.plan("10.231.89.0/30", "aibox-selftest"))
    assert ruleset.startswith("table ip aibox_testhost_aibox_selftest {")
    assert "ip saddr 10.231.89.0/30 ip daddr != 10.231.89.0/30 masquerade" in ruleset


# -- parsing the system's answers ------------------------------------------------------------------


def test_interfaces_with_address():
    out = ("1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n"
           "7: ve-aibox-box    inet 10.231.91.1/30 scope global ve-aibox-box\\       valid_lft forever\n"
           "8: eth0    inet 10.231.91.17/24 brd 10.231.91.255 scope global eth0\n")
    assert network.interfaces_with_address("10.231.91.1", out) == ["ve-aibox-box"]
    assert network.interfaces_with_address("10.231.91.2", out) == []  # a prefix match is not a match


def test_mounts_under_deepest_first():
    text = ("proc /proc proc rw 0 0\n"
            "proc /var/lib/aibox-testhost/a/rootfs/proc proc rw 0 0\n"
            "tmpfs /var/lib/aibox-testhost/a/rootfs/run/x\\040y tmpfs rw 0 0\n"
            "tmpfs /var/lib/aibox-testhost/a/rootfs2 tmpfs rw 0 0\n"
            "tmpfs /var/lib/aibox-testhost/a/rootfs tmpfs rw 0 0\n")
    assert procs.mounts_under(Path("/var/lib/aibox-testhost/a/rootfs"), text) == [
        "/var/lib/aibox-testhost/a/rootfs/run/x y",
        "/var/lib/aibox-testhost/a/rootfs/proc",
        "/var/lib/aibox-testhost/a/rootfs",
    ]


def test_pid_checks_on_this_process(tmp_path):
    me = os.getpid()
    assert procs.alive(me) and not procs.alive(None)
    assert not procs.is_our_nspawn(me, tmp_path)  # alive, but not a systemd-nspawn
    assert procs.is_in_rootfs(me, Path("/")) and not procs.is_in_rootfs(me, tmp_path)
    assert not procs.is_namespace_init(me) and procs.find_init_pid(me) is None
    pidfile = tmp_path / "x.pid"
    assert procs.read_pidfile(pidfile) is None
    pidfile.write_text(f" {me}\n")
    assert procs.read_pidfile(pidfile) == me
    pidfile.write_text("\n")
    assert procs.read_pidfile(pidfile) is None
    with open(pidfile) as held:
        assert procs.holds_open(me, pidfile)
        held.close()
    assert not procs.holds_open(me, pidfile)


def test_net_in_use_only_by_a_live_host(tmp_path):
    state = tmp_path / "state"
    mine, other = state / "mine", state / "other"
    other.mkdir(parents=True)
    mine.mkdir()
    net = Net.plan("10.231.97.0/30", "mine")
    (other / "net.env").write_text(Net.plan("10.231.97.0/30", "other").env_text())
    (mine / "net.env").write_text(net.env_text())
    (mine / "nspawn.pid").write_text(f"{os.getpid()}\n")
    assert network.net_in_use_by(state, mine, net) is None  # other has no nspawn PID: not up
    (other / "nspawn.pid").write_text(f"{os.getpid()}\n")
    assert network.net_in_use_by(state, mine, net) == "other"
    assert network.net_in_use_by(state, mine, Net.plan("10.231.97.4/30", "mine")) is None
