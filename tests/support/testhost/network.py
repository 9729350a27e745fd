"""The host side of a test host's /30: the veth's address, IPv4 forwarding and NAT in an nft table of its own.

Only nftables is used (no iptables rules), and only the host's own table ``ip aibox_testhost_<name>``
is ever created or deleted: other tools on this machine own the rest of the ruleset.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.testhost.procs import read_pidfile
from tests.support.testhost.spec import Net
from tests.support.testhost.tools import log, run, succeeds

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
#: The value of ip_forward before the first test host turned it on; the last ``down`` puts it back.
FORWARD_ORIG = ".ip_forward.orig"


def link_exists(name: str) -> bool:
    return succeeds(["ip", "link", "show", name])


def nft_table_exists(table: str) -> bool:
    return succeeds(["nft", "list", "table", "ip", table])


def nat_ruleset(net: Net) -> str:
    """Masquerade what leaves the /30 for anywhere else (apt and pip from the container)."""
    return f"""table ip {net.nft_table} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {net.cidr} ip daddr != {net.cidr} masquerade
    }}
}}
"""


def setup_nat(net: Net) -> None:
    run(["nft", "delete", "table", "ip", net.nft_table], check=False)  # a leftover of ours, if any
    run(["nft", "-f", "-"], input=nat_ruleset(net))


def address_host_side(net: Net) -> None:
    run(["ip", "addr", "replace", f"{net.host_ip}/30", "dev", net.veth])
    run(["ip", "link", "set", net.veth, "up"])


def interfaces_with_address(ip: str, addr_show: str) -> list[str]:
    """Interfaces that carry IP, from ``ip -4 -o addr show`` output (``2: eth0    inet 10.0.0.5/24 ...``)."""
    found = []
    for line in addr_show.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "inet" and fields[3].split("/")[0] == ip:
            found.append(fields[1])
    return found


def configured_on_this_machine(ip: str) -> list[str]:
    return interfaces_with_address(ip, run(["ip", "-4", "-o", "addr", "show"]).stdout)


def enable_forwarding(state_root: Path) -> None:
    current = IP_FORWARD.read_text().strip()
    if current != "1":
        orig = state_root / FORWARD_ORIG
        if not orig.exists():  # remember the machine's own value once, not the one an earlier host set
            orig.write_text(current + "\n")
        log("enabling net.ipv4.ip_forward")
        IP_FORWARD.write_text("1\n")


def restore_forwarding(state_root: Path, own_dir: Path) -> None:
    """Put net.ipv4.ip_forward back once no other test host needs it any more."""
    orig = state_root / FORWARD_ORIG
    if not orig.is_file():
        return
    for other in state_root.iterdir():
        if other == own_dir or not other.is_dir():
            continue
        pid = read_pidfile(other / "nspawn.pid")
        if pid and Path(f"/proc/{pid}").exists():
            return  # another host is still up
    value = orig.read_text().strip()
    log(f"restoring net.ipv4.ip_forward={value}")
    try:
        IP_FORWARD.write_text(value + "\n")
    except OSError as err:
        log(f"warning: could not restore net.ipv4.ip_forward: {err}")
    orig.unlink(missing_ok=True)


def net_in_use_by(state_root: Path, own_dir: Path, net: Net) -> str | None:
    """The name of another live test host whose recorded /30 is NET's, if any."""
    for netfile in sorted(state_root.glob("*/net.env")):
        if netfile.parent == own_dir:
            continue
        try:
            recorded = netfile.read_text().splitlines()
        except OSError:
            continue
        pid = read_pidfile(netfile.parent / "nspawn.pid")
        if f"NET_CIDR={net.cidr}" in recorded and pid and Path(f"/proc/{pid}").is_dir():
            return netfile.parent.name
    return None
