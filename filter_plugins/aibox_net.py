"""Jinja filters for the aibox playbooks (ansible.cfg ``filter_plugins``: site.yml and playbooks/*.yml).

``local_url``: the URL the box itself uses to reach a service that listens on HOST:PORT. It is the one
copy of this rule on the Ansible side (the start-and-wait probe in roles/common, the Ollama URL the
models and the router use); the daemon's ``aibox-router status`` applies the same rule in Python
(router/cli/status.py, ``router_url``).

- A wildcard listen address is reached on loopback: ``0.0.0.0``, ``""`` or none -> ``127.0.0.1``;
  ``::`` -> ``[::1]`` (a socket bound to ``::`` alone may not accept IPv4).
- An IPv6 literal is bracketed (``fd00::5`` -> ``[fd00::5]``); a name or an IPv4 address is kept as is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ansible.errors import AnsibleFilterError

_WILDCARD_TO_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def local_url(host: Any, port: Any) -> str:
    """``http://HOST:PORT`` as seen from the box: *host* | local_url(*port*)."""
    if host is not None and not isinstance(host, str):
        raise AnsibleFilterError(f"local_url: the listen address must be a string, found {host!r}")
    address = _WILDCARD_TO_LOOPBACK.get((host or "").strip(), (host or "").strip())
    whole = isinstance(port, int) and not isinstance(port, bool)
    number = int(port) if whole or (isinstance(port, str) and port.strip().isdigit()) else 0
    if not 1 <= number <= 65535:
        raise AnsibleFilterError(f"local_url: the port of {host!r} must be a number from 1 to 65535, "
                                 f"found {port!r}")
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"http://{address}:{number}"


class FilterModule:
    """Registers this module's filters with Ansible."""

    def filters(self) -> dict[str, Callable[..., str]]:
        return {"local_url": local_url}
