"""The team as the developer-machine deploy sees it, read from the same inventory Ansible uses.

``inventory/group_vars/aibox/team.yml`` lists the developers (name, machine, OS user, budget,
targets, absent); the router's targets and override header come from the router's inventory
(``inventory/group_vars/aibox/router.yml``, falling back to ``roles/router/defaults/main.yml``);
each developer's key is the file Ansible generated once, ``inventory/credentials/<name>.key``.
Plain YAML only: no Ansible is needed on a developer's laptop.

Environment overrides (tests, or a checkout laid out differently):
``AIBOX_TEAM_FILE``, ``AIBOX_CREDENTIALS_DIR``, ``AIBOX_ROUTER_VARS``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
GROUP_VARS = REPO / "inventory" / "group_vars" / "aibox"
ROLE_DEFAULTS = REPO / "roles" / "router" / "defaults" / "main.yml"
# The router's shipped config: the role's routing plan defaults are read from it (one copy of the
# plan), so the deploy reads the targets there too when the inventory does not set its own.
ROUTER_SHIPPED_CONFIG = REPO / "router" / "defaults" / "config.yml"
LOCAL = "@local"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Continue roles by target when team_continue_roles does not name it: cloud targets chat and edit,
# local ones also apply edits (cheap, many calls).
_DEFAULT_ROLES = {"cloud": ["chat", "edit"], "local": ["chat", "edit", "apply"]}


class TeamError(ValueError):
    """The team inventory is wrong; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class Developer:
    """One checked entry of ``team_developers`` (its keys: docs/inventory.md, team.yml). None where the
    entry leaves a key out: ``user``, the SSH user's (or the @local runner's) home; ``daily_budget``,
    none of its own; ``targets``, every target."""

    name: str
    machine: str
    user: str | None = None
    daily_budget: float | None = None
    targets: tuple[str, ...] | None = None
    absent: bool = False
    ssh: dict[str, Any] = field(default_factory=dict)  # extra pyinfra connection data for the machine

    @property
    def is_local(self) -> bool:
        return self.machine == LOCAL


@dataclass(frozen=True)
class Target:
    name: str
    backend: str
    model: str
    continue_roles: tuple[str, ...]

    @property
    def is_cloud(self) -> bool:
        return self.backend == "cloud"


@dataclass(frozen=True)
class Team:
    source: Path
    router_url: str
    disable_nonessential_traffic: bool
    override_header: str
    targets: dict[str, Target]
    developers: list[Developer]

    def developer(self, name: str) -> Developer:
        for dev in self.developers:
            if dev.name == name:
                return dev
        raise TeamError(f"{self.source}: no developer named {name!r} in team_developers "
                        f"(there are: {', '.join(d.name for d in self.developers) or 'none'})")

    def allowed_targets(self, dev: Developer) -> list[Target]:
        """The targets *dev* may use, in the router's order."""
        return [t for n, t in self.targets.items() if dev.targets is None or n in dev.targets]


def team_file() -> Path:
    return Path(os.environ.get("AIBOX_TEAM_FILE") or GROUP_VARS / "team.yml")


def credentials_dir() -> Path:
    return Path(os.environ.get("AIBOX_CREDENTIALS_DIR") or REPO / "inventory" / "credentials")


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise TeamError(f"{path} not found: the team inventory lives there (docs/team.md)") from None
    except yaml.YAMLError as err:
        raise TeamError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise TeamError(f"{path}: expected a mapping of variables, got {type(data).__name__}")
    return data


def _router_var(name: str, default: Any) -> Any:
    """A router variable as the inventory sets it, else the role default; Jinja-templated values
    (strings containing '{{') cannot be evaluated without Ansible and fall through to the default."""
    for path in (Path(os.environ.get("AIBOX_ROUTER_VARS") or GROUP_VARS / "router.yml"), ROLE_DEFAULTS):
        if path.exists():
            value = _load_yaml(path).get(name)
            if value is not None and not (isinstance(value, str) and "{{" in value):
                return value
    return default


def _targets(continue_roles: dict[str, list[str]], source: Path) -> dict[str, Target]:
    raw = _router_var("router_targets", None)
    if raw is None:  # the role's default: the targets of the router's shipped config
        raw = _load_yaml(ROUTER_SHIPPED_CONFIG).get("targets") or {}
    targets = {}
    for name, spec in raw.items():
        backend = str(spec.get("backend", ""))
        roles = continue_roles.get(name) or _DEFAULT_ROLES["cloud" if backend == "cloud" else "local"]
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise TeamError(f"{source}: team_continue_roles.{name} must be a list of role names")
        targets[name] = Target(name=name, backend=backend, model=str(spec.get("model", "")),
                               continue_roles=tuple(roles))
    unknown = sorted(set(continue_roles) - set(targets))
    if unknown:
        raise TeamError(f"{source}: team_continue_roles names {unknown}, which are not router targets "
                        f"({', '.join(targets)})")
    return targets


def _developer(entry: Any, index: int, source: Path, targets: dict[str, Target]) -> Developer:
    where = f"{source}: team_developers[{index}]"
    if not isinstance(entry, dict):
        raise TeamError(f"{where}: expected a mapping with name and machine")
    name, machine = entry.get("name"), entry.get("machine")
    if not isinstance(name, str) or not _NAME.match(name):
        raise TeamError(f"{where}: name must be letters, digits, '-', '_' or '.' (got {name!r})")
    if not isinstance(machine, str) or not machine:
        raise TeamError(f"{where} ({name}): machine must be an SSH host or \"@local\"")
    allowed = entry.get("targets")
    if allowed is not None:
        if not isinstance(allowed, list) or not allowed:
            raise TeamError(f"{where} ({name}): targets must be a non-empty list of target names")
        unknown = sorted(set(allowed) - set(targets))
        if unknown:
            raise TeamError(f"{where} ({name}): targets {unknown} are not router targets "
                            f"({', '.join(targets)})")
    budget = entry.get("daily_budget")
    ssh = entry.get("ssh") or {}
    if not isinstance(ssh, dict):
        raise TeamError(f"{where} ({name}): ssh must be a mapping of pyinfra connection data (ssh_user, ...)")
    return Developer(name=name, machine=machine, user=entry.get("user") or None,
                     daily_budget=float(budget) if budget is not None else None,
                     targets=tuple(allowed) if allowed is not None else None,
                     absent=bool(entry.get("absent", False)), ssh=dict(ssh))


def load_team(path: Path | None = None) -> Team:
    source = path or team_file()
    data = _load_yaml(source)
    url = data.get("team_router_url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise TeamError(f"{source}: team_router_url must be the router's URL as the developers' machines "
                        f"reach it, e.g. http://192.168.10.88:8088 (got {url!r})")
    targets = _targets(data.get("team_continue_roles") or {}, source)
    entries = data.get("team_developers") or []
    if not isinstance(entries, list):
        raise TeamError(f"{source}: team_developers must be a list of developers")
    developers = [_developer(e, i, source, targets) for i, e in enumerate(entries)]
    seen: set[str] = set()
    for dev in developers:
        if dev.name in seen:
            raise TeamError(f"{source}: developer {dev.name!r} is listed twice in team_developers")
        seen.add(dev.name)
    return Team(source=source, router_url=url.rstrip("/"),
                disable_nonessential_traffic=bool(data.get("team_disable_nonessential_traffic", True)),
                override_header=str(_router_var("router_override_header", "x-aibox-target")),
                targets=targets, developers=developers)


def read_key(name: str) -> str:
    """The developer's client key, as Ansible's password lookup stored it (first line; a
    ``salt=`` suffix, which the lookup adds only for hashed passwords, is not part of the key)."""
    path = credentials_dir() / f"{name}.key"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TeamError(
            f"no key for {name!r} at {path}: run `ansible-playbook playbooks/team.yml` on the admin's "
            f"checkout first (it generates the key and adds it to the router), or copy the key file "
            f"the admin gave you there (mode 0600)") from None
    key = text.splitlines()[0].split(" salt=")[0].strip() if text.strip() else ""
    if len(key) < 16:
        raise TeamError(f"{path}: the key must be 16 or more characters (the router refuses shorter ones)")
    return key
