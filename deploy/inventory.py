"""pyinfra inventory of the developers' machines, from inventory/group_vars/aibox/team.yml.

    pyinfra deploy/inventory.py deploy/developer.py          (an admin pushes over SSH)

One host per SSH machine (``machine`` of team_developers; ``@local`` entries are left out: those
developers run ``pyinfra @local deploy/developer.py`` themselves). Its data: the developers to
configure there (``aibox_developers``) and any pyinfra connection data their entries give (``ssh``).
"""

from __future__ import annotations

from deploy.team import load_team

_team = load_team()
_machines: dict[str, dict] = {}
for _dev in _team.developers:
    if _dev.is_local:
        continue
    _data = _machines.setdefault(_dev.machine, {"aibox_developers": []})
    _data["aibox_developers"].append(_dev.name)
    _data.update(_dev.ssh)

developers = [(machine, data) for machine, data in _machines.items()]
