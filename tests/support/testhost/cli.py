"""scripts/testhost -- a real systemd test host ("aibox in a box") on this machine.

Boots a Debian 12 rootfs with systemd-nspawn (systemd as PID 1), gives it a
private /30 over a veth pair, NATs it out for apt/pip, starts sshd with a
per-host ed25519 key and writes an Ansible inventory + ssh_config for it.

  scripts/testhost up        [--name NAME]   boot (idempotent)
  scripts/testhost rootfs                    build the cached rootfs tarball if missing (debootstrap)
  scripts/testhost down      [--name NAME]   tear down everything it created
  scripts/testhost status    [--name NAME]   exit 0 if up, 3 if not
  scripts/testhost ssh       [--name NAME] [cmd...]
  scripts/testhost inventory [--name NAME]   print the inventory path
  scripts/testhost ip        [--name NAME]   print the container IP

Defaults for NAME and the net live in tests/support/testhost/defaults.py ("{name}",
{net}: the aibox in a box).

Environment:
  AIBOX_TESTHOST_NAME   host name when --name is not given
  AIBOX_TESTHOST_NET    private /30 for this host (host side .1, container .2).
                        Per host: two hosts with different names need different nets.
  AIBOX_TESTHOST_STATE  state root (default {state})
  AIBOX_TESTHOST_CACHE  rootfs cache dir (default ${{AIBOX_CACHE:-{cache}}}/testhost)
  AIBOX_TESTHOST_MIRROR Debian mirror for a rootfs build (default: the one this machine's apt uses)
  AIBOX_TESTHOST_SUITE  Debian suite for a rootfs build (default {suite})

See docs/testhost.md.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from tests.support.testhost import defaults, lifecycle
from tests.support.testhost.access import usage_info
from tests.support.testhost.rootfs import ensure_rootfs_tarball
from tests.support.testhost.spec import Host
from tests.support.testhost.tools import PROG, TestHostError, ensure_packages, require_root

COMMANDS = ("up", "rootfs", "down", "status", "ssh", "inventory", "ip")


class UsageError(TestHostError):
    """A bad command line: the usage text goes with it."""


@dataclass
class Invocation:
    command: str  # one of COMMANDS, or "help"
    name: str | None = None  # None: AIBOX_TESTHOST_NAME or the default
    rest: list[str] = field(default_factory=list)  # ssh: the remote command


def parse(argv: list[str]) -> Invocation:
    """COMMAND [--name NAME | --name=NAME] [-h|--help] [-- ARGS...]; ``ssh`` takes everything from its
    first other argument on as the remote command."""
    if not argv:
        raise UsageError("")
    command, args = argv[0], argv[1:]
    if command in ("-h", "--help", "help"):
        return Invocation("help")
    if command not in COMMANDS:
        raise UsageError(f"unknown command '{command}'")
    inv = Invocation(command)
    while args:
        arg = args.pop(0)
        if arg == "--name":
            if not args:
                raise TestHostError("--name needs a value")
            inv.name = args.pop(0)
        elif arg.startswith("--name="):
            inv.name = arg.removeprefix("--name=")
        elif arg == "--":
            inv.rest += args
            break
        elif arg in ("-h", "--help"):
            return Invocation("help")
        elif command == "ssh":
            inv.rest += [arg, *args]
            break
        else:
            raise TestHostError(f"unknown argument '{arg}' for '{command}'")
    return inv


def usage() -> str:
    """The module docstring, with the defaults filled in from their one home."""
    return (__doc__ or "").format(name=defaults.NAME, net=defaults.NET, state=defaults.STATE_ROOT,
                                  cache=defaults.CACHE_ROOT, suite=defaults.SUITE)


def run_command(inv: Invocation) -> int:
    host = Host.from_env(name=inv.name)
    if inv.command == "up":
        net = lifecycle.up(host)
        print(usage_info(host, net), end="")
    elif inv.command == "down":
        lifecycle.down(host)
    elif inv.command == "status":
        code, text = lifecycle.status(host)
        print(text, end="")
        return code
    elif inv.command == "ssh":
        lifecycle.require_up(host)
        sys.stdout.flush()
        os.execvp("ssh", ["ssh", "-F", str(host.ssh_config), defaults.CONTAINER_HOSTNAME, *inv.rest])
    elif inv.command == "inventory":
        lifecycle.require_up(host)
        print(host.inventory)
    elif inv.command == "ip":
        print(host.current_net().ct_ip)
    elif inv.command == "rootfs":
        require_root("rootfs")
        ensure_packages()
        print(ensure_rootfs_tarball(host))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        inv = parse(sys.argv[1:] if argv is None else argv)
        if inv.command == "help":
            print(usage(), file=sys.stderr, end="")
            return 0
        return run_command(inv)
    except UsageError as err:
        print(usage(), file=sys.stderr, end="")
        if not str(err):
            return 2  # no command at all
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except TestHostError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; clean up with: scripts/testhost down", file=sys.stderr)
        return 130
