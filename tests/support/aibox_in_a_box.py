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
from tests.support.testhost import DEFAULT_NAME, DEFAULT_NET, TestHost

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


def converge(host: TestHost, playbook: str = "site.yml", ansible_args: list[str] | None = None) -> int:
    """Converge PLAYBOOK into the (running) test host with the test-host variables; Ansible's exit code."""
    work = CACHE / "aibox-in-a-box" / host.name
    shutil.rmtree(work, ignore_errors=True)
    source = snapshot_sources(work / "router-src")
    root = build_http_root(work / "http", source)
    with serve_http(host_side_ip(host.net), root) as url:
        say(f"converging {playbook} into {host.name} (Ansible's progress follows)")
        cmd = [*playbook_command(host.inventory, playbook, url, source), *(ansible_args or [])]
        return subprocess.call(cmd, cwd=REPO, env=ansible_env())


def verify_command(inventory: Path, host_pattern: str = "aibox", extra: list[str] | None = None) -> list[str]:
    """testinfra's suite against an Ansible inventory (its backend runs ansible-inventory from PATH)."""
    return [str(VENV_BIN / "python"), "-m", "pytest", "-p", "no:cacheprovider", str(REPO / "tests" / "infra"),
            f"--hosts=ansible://{host_pattern}", f"--ansible-inventory={inventory}", *(extra or [])]


def up(host: TestHost) -> int:
    say(f"booting the test host {host.name} ({host.net})")
    host.up()
    rc = converge(host)
    if rc != 0:
        say(f"site.yml failed (exit {rc}); the host stays up for a look: ./aibox ssh")
        return rc
    print(f"""
The aibox in a box is up: Debian 12 with systemd at {host.ip}, site.yml converged.
  router status:  ./aibox ssh -- runuser -u aibox-router -- \\
                    /opt/aibox-router/venv/bin/aibox-router status -c /etc/aibox-router/config.yml
  use the router: ssh -F {host.ssh_config} -N -L 8088:127.0.0.1:8088 aibox &
                  export ANTHROPIC_BASE_URL=http://127.0.0.1:8088
                  export ANTHROPIC_API_KEY=test-client-key-0123456789abcdef   # the test host's client key
  verify it:      ./aibox verify
  re-converge:    ./aibox converge [--playbook P] [ansible-playbook options, e.g. --check --diff]
  tear it down:   ./aibox down
(Ollama on the test host is the test stand-in: it answers with canned text, not a real model.)""")
    return 0


def _running_host(name: str, net: str | None) -> TestHost:
    host = TestHost(name=name, net=net)
    if not host.is_up():
        say(f"the test host {name} is not up: run ./aibox up first")
        sys.exit(3)
    host.inventory = host.dir / "inventory" / "hosts.yml"
    return host


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "converge", "verify"],
                    help="up: boot and converge site.yml; converge: re-run a playbook into the running host;"
                         " verify: run the testinfra suite against it")
    ap.add_argument("--name", default=DEFAULT_NAME, help=f"test host name (default {DEFAULT_NAME})")
    ap.add_argument("--net", default=None, help=f"its /30 (default {DEFAULT_NET})")
    ap.add_argument("--playbook", default="site.yml", help="converge: the playbook (default site.yml)")
    args, rest = ap.parse_known_args(argv)
    if args.command == "up":
        sys.exit(up(TestHost(name=args.name, net=args.net)))
    host = _running_host(args.name, args.net)
    if args.command == "converge":
        sys.exit(converge(host, args.playbook, rest))
    sys.exit(subprocess.call(verify_command(host.inventory, extra=rest), cwd=REPO, env=ansible_env()))


if __name__ == "__main__":
    main()
