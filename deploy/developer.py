"""pyinfra deploy: point a developer machine's tools at the aibox, or take that out again (docs/team.md).

    pyinfra deploy/inventory.py deploy/developer.py           an admin, over SSH, every machine
    pyinfra @local deploy/developer.py                        a developer on their own machine
    pyinfra @local deploy/developer.py --data developer=NAME  ... when several entries are @local

For each developer of inventory/group_vars/aibox/team.yml on this machine it writes (merging into
files that exist, leaving the user's other settings alone; a second run changes nothing):

    ~/.claude/settings.json      env: ANTHROPIC_BASE_URL, ANTHROPIC_AUTH_TOKEN (+ traffic opt-out)   0600
    ~/.claude/CLAUDE.md          a marked section: what runs locally, what goes to Claude             0644
    ~/.claude.json               mcpServers.aibox, as `claude mcp add --transport http --scope user`  0600
    ~/.continue/config.yaml      one OpenAI-compatible model per target the developer may use          0600
    ~/.config/aibox/openai.env   OPENAI_BASE_URL, OPENAI_API_KEY                                       0600

A developer marked ``absent: true`` gets all of it removed again (their key is revoked on the box
by ``ansible-playbook playbooks/team.yml``).
"""

from __future__ import annotations

import base64
import getpass
from collections.abc import Callable
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.facts.server import Home, Users
from pyinfra.operations import files

from deploy import tool_configs as tc
from deploy.team import LOCAL, Developer, Team, TeamError, load_team, read_key


class FileText(FactBase):
    """A file's exact text (base64 on the wire, so no line or whitespace is lost); None if missing."""

    def command(self, path: str) -> str:
        quoted = "'" + path.replace("'", "'\\''") + "'"
        return f"if [ -f {quoted} ]; then echo present; base64 < {quoted}; else echo missing; fi"

    def process(self, output: list[str]) -> str | None:
        if not output or output[0].strip() != "present":
            return None
        return base64.b64decode("".join(line.strip() for line in output[1:])).decode()


class DirListing(FactBase):
    """Names in a directory (hidden ones too), or None when it is not a directory."""

    def command(self, path: str) -> str:
        quoted = "'" + path.replace("'", "'\\''") + "'"
        return f"if [ -d {quoted} ]; then echo dir; ls -A {quoted}; else echo none; fi"

    def process(self, output: list[str]) -> list[str] | None:
        if not output or output[0].strip() != "dir":
            return None
        return [line.strip() for line in output[1:] if line.strip()]


Onboard = Callable[[str | None, tc.Endpoint], str]
Offboard = Callable[[str | None], str | None]
# (path under the home directory, onboard merge, offboard removal, mode)
MANAGED: list[tuple[str, Onboard, Offboard, str]] = [
    (".claude/settings.json", tc.claude_settings_onboard, tc.claude_settings_offboard, "600"),
    (".claude/CLAUDE.md", tc.claude_md_onboard, tc.claude_md_offboard, "644"),
    (".claude.json", tc.claude_json_onboard, tc.claude_json_offboard, "600"),
    (".continue/config.yaml", tc.continue_onboard, tc.continue_offboard, "600"),
    (".config/aibox/openai.env", lambda _old, ep: tc.openai_env(ep), lambda _old: None, "600"),
]
# Directories the deploy creates when missing (parents first), owned by the developer; removed again
# on offboarding once nothing else is in them.
CREATED_DIRS = [".claude", ".continue", ".config", ".config/aibox"]


def developers_here(team: Team) -> list[Developer]:
    if host.name == LOCAL:
        return [_local_developer(team)]
    names = host.data.get("aibox_developers") or []
    if not names:
        raise TeamError(f"{host.name} has no developer in {team.source}: run with deploy/inventory.py")
    return [team.developer(name) for name in names]


def _local_developer(team: Team) -> Developer:
    """``--data developer=NAME``, else the @local entry whose user is whoever runs the deploy, else
    the only @local entry."""
    wanted = host.data.get("developer")
    if wanted:
        return team.developer(wanted)
    local = [d for d in team.developers if d.is_local]
    me = getpass.getuser()
    mine = [d for d in local if d.user == me] or (local if len(local) == 1 else [])
    if len(mine) != 1:
        names = ", ".join(d.name for d in local) or "none"
        raise TeamError(f"{team.source}: cannot tell which @local developer you are ({me}); "
                        f"run with --data developer=NAME (one of: {names})")
    return mine[0]


def endpoint(team: Team, dev: Developer) -> tc.Endpoint:
    targets = [(t.name, t.is_cloud, list(t.continue_roles)) for t in team.allowed_targets(dev)]
    return tc.Endpoint(router_url=team.router_url, key=read_key(dev.name),
                       override_header=team.override_header, targets=targets,
                       disable_nonessential_traffic=team.disable_nonessential_traffic)


def configure(team: Team, dev: Developer) -> None:
    owner = None
    if host.name == LOCAL:
        if dev.user and dev.user != getpass.getuser():
            raise TeamError(f"{team.source}: {dev.name}'s user is {dev.user}; "
                            f"run the @local deploy as {dev.user}")
        home = host.get_fact(Home)
    else:
        owner = dev.user
        home = host.get_fact(Home, user=owner or "")
    if not home:
        raise TeamError(f"{host.name}: no home directory for user {owner or '(the SSH user)'} ({dev.name})")
    ep = None if dev.absent else endpoint(team, dev)
    action = "Offboard" if dev.absent else "Onboard"
    group = None
    if ep is not None:
        group = host.get_fact(Users)[owner]["group"] if owner else None
        for relative in CREATED_DIRS:
            if host.get_fact(DirListing, path=f"{home}/{relative}") is None:
                files.directory(name=f"Onboard {dev.name}: create {home}/{relative}",
                                path=f"{home}/{relative}", user=owner, group=group)
    removed: set[str] = set()  # paths under home this run deletes
    for relative, onboard, offboard, mode in MANAGED:
        path = f"{home}/{relative}"
        current = host.get_fact(FileText, path=path)
        wanted = offboard(current) if ep is None else onboard(current, ep)
        if wanted is None:
            removed.add(relative)
            files.file(name=f"{action} {dev.name}: remove {path}", path=path, present=False)
        else:
            files.put(name=f"{action} {dev.name}: {path}", src=StringIO(wanted), dest=path,
                      user=owner, group=group, mode=mode, create_remote_dir=False)
    if ep is None:
        # Facts are read before any operation runs: a directory counts as empty when everything
        # in it is removed by this run (deepest directories first).
        for relative in reversed(CREATED_DIRS):  # deepest first
            listing = host.get_fact(DirListing, path=f"{home}/{relative}")
            if listing is not None and all(f"{relative}/{name}" in removed for name in listing):
                removed.add(relative)
                files.directory(name=f"Offboard {dev.name}: remove empty {home}/{relative}",
                                path=f"{home}/{relative}", present=False)


_team = load_team()
for _dev in developers_here(_team):
    configure(_team, _dev)
