"""The project's Jinja filter ``local_url`` (filter_plugins/aibox_net.py): where the box reaches a
service that listens on HOST:PORT. The module is imported directly here, and through Ansible in
test_inventory_render.py (the inventory's models_ollama_url) and by every converge (roles/common's
HTTP wait)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from ansible.errors import AnsibleFilterError

from aibox_router.cli.status import router_url
from aibox_router.config_load import parse_config

REPO = Path(__file__).resolve().parents[2]


def _plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("aibox_net", REPO / "filter_plugins" / "aibox_net.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


aibox_net = _plugin()


@pytest.mark.parametrize(("host", "port", "url"), [
    ("0.0.0.0", 8088, "http://127.0.0.1:8088"),     # IPv4 wildcard: loopback
    ("", 8088, "http://127.0.0.1:8088"),            # empty listen address: every interface
    (None, 8088, "http://127.0.0.1:8088"),
    ("::", 11434, "http://[::1]:11434"),            # IPv6 wildcard: IPv6 loopback, bracketed
    ("127.0.0.1", 11434, "http://127.0.0.1:11434"),
    ("192.168.10.88", 8088, "http://192.168.10.88:8088"),  # a LAN address is used as it is
    ("fd00::5", 8088, "http://[fd00::5]:8088"),     # IPv6 literal: bracketed
    ("::1", 8088, "http://[::1]:8088"),
    ("[::1]", 8088, "http://[::1]:8088"),           # already bracketed: not twice
    ("localhost", "11434", "http://localhost:11434"),  # a port from a string (extra vars, templating)
])
def test_a_listen_address_becomes_the_url_the_box_uses(host: str | None, port: object, url: str) -> None:
    assert aibox_net.local_url(host, port) == url


@pytest.mark.parametrize("port", [0, 65536, -1, "", "80a", None, True, 80.5])
def test_a_port_that_is_not_a_port_is_refused_with_the_address_named(port: object) -> None:
    with pytest.raises(AnsibleFilterError, match=r"the port of '0\.0\.0\.0' must be a number from 1 to 65535"):
        aibox_net.local_url("0.0.0.0", port)


def test_an_address_that_is_not_text_is_refused() -> None:
    with pytest.raises(AnsibleFilterError, match="must be a string, found 8088"):
        aibox_net.local_url(8088, 8088)


def test_ansible_finds_the_filter_under_its_name() -> None:
    assert aibox_net.FilterModule().filters() == {"local_url": aibox_net.local_url}


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "127.0.0.1", "::1", "192.168.10.88", "fd00::5"])
def test_the_router_daemon_reaches_its_listen_address_the_same_way(host: str) -> None:
    # `aibox-router status` keeps its own copy of the rule (router/cli/status.py, the daemon has no
    # Ansible); the two must agree, or the playbook's wait and `status` would probe different places.
    config = parse_config({"server": {"host": host, "port": 8088}, "default_target": "x",
                           "backends": {"o": {"type": "ollama", "base_url": "http://127.0.0.1:11434"}},
                           "targets": {"x": {"backend": "o", "model": "m"}}}, "t", env={})
    assert router_url(config) == aibox_net.local_url(host, 8088)
