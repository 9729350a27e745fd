"""What one test host is called and where its state lives: pure naming, /30 arithmetic, ``net.env``.

Nothing here touches the system, so all of it is unit-tested without root.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.testhost import defaults
from tests.support.testhost.tools import TestHostError

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_NET = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})/30")
#: net.env's keys, in the order of Net's fields (the provisioning test reads VETH and NFT_TABLE).
_NET_ENV_KEYS = ("NET_CIDR", "HOST_IP", "CT_IP", "VETH", "NFT_TABLE")
#: The kernel's limit on an interface name (IFNAMSIZ - 1).
_IFNAME_MAX = 15


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise TestHostError(f"invalid --name '{name}' (lowercase letters, digits, '-'; max 40 chars)")
    return name


def veth_name(name: str) -> str:
    """The host side of the veth. We name it ourselves (--network-veth-extra) so ``down`` knows exactly
    which link is ours; a name too long for the kernel is cut and made unique with 5 hex digits of md5."""
    if len(name) + 3 <= _IFNAME_MAX:
        return f"ve-{name}"
    return f"ve-{name[:7]}{hashlib.md5(name.encode()).hexdigest()[:5]}"


def nft_table(name: str) -> str:
    """The host's own nftables table (nft identifiers cannot contain '-')."""
    return "aibox_testhost_" + name.replace("-", "_")


@dataclass(frozen=True)
class Net:
    """A host's private /30 and the names of the links and rules that carry it (what ``net.env`` records)."""

    cidr: str
    host_ip: str  # .1: the host side of the veth, the container's default route
    ct_ip: str  # .2: the container
    veth: str
    nft_table: str

    @classmethod
    def plan(cls, net: str, name: str) -> Net:
        """Parse ``a.b.c.d/30`` (any address inside the /30 is accepted and rounded down)."""
        match = _NET.fullmatch(net)
        if not match:
            raise TestHostError(f"AIBOX_TESTHOST_NET='{net}' must be an IPv4 /30, e.g. 10.231.88.0/30")
        a, b, c, d = (int(octet) for octet in match.groups())
        if max(a, b, c, d) > 255:
            raise TestHostError(f"AIBOX_TESTHOST_NET='{net}': bad octet")
        d &= ~3
        return cls(f"{a}.{b}.{c}.{d}/30", f"{a}.{b}.{c}.{d + 1}", f"{a}.{b}.{c}.{d + 2}",
                   veth_name(name), nft_table(name))

    def env_text(self) -> str:
        return "".join(f"{key}={value}\n" for key, value in self._fields().items())

    @classmethod
    def from_env_text(cls, text: str) -> Net:
        values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        try:
            return cls(*(values[key] for key in _NET_ENV_KEYS))
        except KeyError as missing:
            raise TestHostError(f"net.env lacks {missing}") from None

    def _fields(self) -> dict[str, str]:
        return dict(zip(_NET_ENV_KEYS, (self.cidr, self.host_ip, self.ct_ip, self.veth, self.nft_table),
                        strict=True))


@dataclass(frozen=True)
class Host:
    """One test host: its name, the /30 asked for, and the paths of its state."""

    name: str
    net: str
    state_root: Path
    cache_dir: Path
    suite: str = defaults.SUITE
    mirror: str | None = None  # None: this machine's apt mirror

    def __post_init__(self) -> None:
        validate_name(self.name)

    @classmethod
    def from_env(
        cls,
        name: str | None = None,
        net: str | None = None,
        state_root: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] = os.environ,
    ) -> Host:
        """Arguments first, then the AIBOX_TESTHOST_* environment, then ``defaults``."""
        cache_root = env.get("AIBOX_CACHE") or defaults.CACHE_ROOT
        return cls(
            name=name or env.get("AIBOX_TESTHOST_NAME") or defaults.NAME,
            net=net or env.get("AIBOX_TESTHOST_NET") or defaults.NET,
            state_root=Path(state_root or env.get("AIBOX_TESTHOST_STATE") or defaults.STATE_ROOT),
            cache_dir=Path(env.get("AIBOX_TESTHOST_CACHE") or Path(cache_root) / "testhost"),
            suite=env.get("AIBOX_TESTHOST_SUITE") or defaults.SUITE,
            mirror=env.get("AIBOX_TESTHOST_MIRROR") or None,
        )

    # -- the state directory ----------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        return self.state_root / self.name

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    @property
    def inventory_dir(self) -> Path:
        return self.dir / "inventory"

    @property
    def inventory(self) -> Path:
        return self.inventory_dir / "hosts.yml"

    @property
    def ssh_config(self) -> Path:
        return self.dir / "ssh_config"

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def nspawn_log(self) -> Path:
        return self.dir / "nspawn.log"

    @property
    def nspawn_pidfile(self) -> Path:
        return self.dir / "nspawn.pid"

    @property
    def init_pidfile(self) -> Path:
        return self.dir / "init.pid"

    @property
    def netfile(self) -> Path:
        return self.dir / "net.env"

    @property
    def ready(self) -> Path:
        return self.dir / "ready"

    @property
    def lockfile(self) -> Path:
        return self.state_root / f".{self.name}.lock"

    @property
    def tarball(self) -> Path:
        return self.cache_dir / f"{self.suite}-rootfs.tar"

    # -- the network ------------------------------------------------------------------------------

    @property
    def veth(self) -> str:
        return veth_name(self.name)

    @property
    def nft_table(self) -> str:
        return nft_table(self.name)

    def planned_net(self) -> Net:
        """The /30 asked for (argument or environment), validated."""
        return Net.plan(self.net, self.name)

    def recorded_net(self) -> Net | None:
        """What ``up`` recorded; while the host is (or was) up, this wins over the environment."""
        try:
            return Net.from_env_text(self.netfile.read_text())
        except (OSError, TestHostError):
            # Never recorded, not ours to read (ip as a non-root user: the /30 asked for, as before), or
            # half-written by an interrupted up: down still cleans up by the names derived from --name.
            return None

    def current_net(self) -> Net:
        return self.recorded_net() or self.planned_net()
