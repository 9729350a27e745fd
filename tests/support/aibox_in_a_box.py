"""The aibox in a box: a local systemd test host with the whole site.yml converged into it.

``./aibox up`` runs ``python -m tests.support.aibox_in_a_box up``; the provisioning test uses the
same pieces. It lives under tests/ because what it converges is the test host: Ollama there is the
TEST STAND-IN (tests/doubles/ollama_standin/), since the real release and model weights cannot be
downloaded on a closed network, and the NVIDIA role takes its no-GPU path. Everything else (the
router wheel, its config, units, cron jobs, hardening) is what the real aibox gets.

The test host reaches nothing but this machine: the stand-in release and the router's dependency
wheels are served to it over HTTP from the host side of its veth, and only while Ansible runs.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Network
from pathlib import Path

from tests.doubles.ollama_standin.build import build as build_standin
from tests.support.testhost import TestHost

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
VARS_FILE = REPO / "tests" / "provision" / "testhost-vars.yml"
CACHE = REPO / ".cache"
WHEEL_CACHE = CACHE / "provision-wheels"
STANDIN_VERSION = "0.0.0-standin"


def say(msg: str) -> None:
    print(f"[aibox-in-a-box] {msg}", file=sys.__stderr__, flush=True)


def host_side_ip(net: str) -> str:
    """The host end of the test host's /30 (scripts/testhost gives it the first address)."""
    return str(next(IPv4Network(net).hosts()))


def snapshot_sources(dest: Path) -> Path:
    """The router sources as of now, so edits made while Ansible runs don't change what it installs."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    shutil.copy2(REPO / "README.md", dest / "README.md")
    shutil.copytree(REPO / "router", dest / "router", ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)
    return dest


def build_http_root(root: Path, source_dir: Path) -> Path:
    """``ollama/`` (the stand-in release) and ``wheels/`` (the router's dependencies) for the host."""
    build_standin(root / "ollama", version=STANDIN_VERSION)
    wheel_dir = root / ".router-wheel"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(source_dir)],
                   check=True, env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"})
    (wheel,) = wheel_dir.glob("aibox_router-*.whl")
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    say("downloading the router's dependencies (cached in .cache/provision-wheels) ...")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(WHEEL_CACHE), str(wheel)], check=True)
    wheels = root / "wheels"
    wheels.mkdir(exist_ok=True)
    for f in WHEEL_CACHE.iterdir():
        if f.suffix in (".whl", ".gz", ".zip") and not f.name.startswith("aibox_router-"):
            shutil.copy2(f, wheels / f.name)
    return root


@contextmanager
def serve_http(ip: str, root: Path) -> Iterator[str]:
    """A static HTTP server bound to the host side of the veth (only the test host reaches it)."""
    with socket.socket() as s:
        s.bind((ip, 0))
        port = s.getsockname()[1]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer((ip, port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{ip}:{port}"
    finally:
        server.shutdown()
        server.server_close()


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # ansible-inventory for testinfra
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def playbook_command(inventory: Path, playbook: str, http_url: str, source_dir: Path,
                     extra: dict | None = None) -> list[str]:
    return [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), playbook, "-e", f"@{VARS_FILE}",
            "-e", json.dumps({"aibox_test_http": http_url, "router_source_dir": str(source_dir), **(extra or {})})]


def up(name: str, net: str) -> int:
    host = TestHost(name=name, net=net)
    say(f"booting the test host {name} ({net})")
    host.up()
    work = CACHE / "aibox-in-a-box" / name
    shutil.rmtree(work, ignore_errors=True)
    source = snapshot_sources(work / "router-src")
    root = build_http_root(work / "http", source)
    with serve_http(host_side_ip(net), root) as url:
        say("converging site.yml into it (Ansible's progress follows)")
        rc = subprocess.call(playbook_command(host.inventory, "site.yml", url, source), cwd=REPO, env=ansible_env())
    if rc != 0:
        say(f"site.yml failed (exit {rc}); the host stays up for a look: scripts/testhost ssh --name {name}")
        return rc
    ssh_config = host.ssh_config
    print(f"""
The aibox in a box is up: Debian 12 with systemd at {host.ip}, site.yml converged.
  router status:  scripts/testhost ssh --name {name} -- runuser -u aibox-router -- \\
                    /opt/aibox-router/venv/bin/aibox-router status -c /etc/aibox-router/config.yml
  use the router: ssh -F {ssh_config} -N -L 8088:127.0.0.1:8088 aibox &
                  export ANTHROPIC_BASE_URL=http://127.0.0.1:8088
                  export ANTHROPIC_API_KEY=test-client-key-0123456789abcdef   # the test host's client key
  verify it:      .venv/bin/pytest tests/infra --hosts=ansible://aibox --ansible-inventory={host.inventory}
  tear it down:   ./aibox down
(Ollama on the test host is the test stand-in: it answers with canned text, not a real model.)""")
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up"])
    ap.add_argument("--name", default="aibox-box")
    ap.add_argument("--net", default=os.environ.get("AIBOX_TESTHOST_NET", "10.231.91.0/30"))
    args = ap.parse_args()
    sys.exit(up(args.name, args.net))


if __name__ == "__main__":
    main()
