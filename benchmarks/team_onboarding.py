"""Measure team onboarding and revocation (docs/team.md, issue 14's targets), in one run on this machine.

* onboarding: ``pyinfra @local deploy/developer.py`` for one developer into an empty temporary HOME
  (the whole command, start to exit: pyinfra start-up, facts, five files written); target <= 20 s;
* re-run: the same command again; target 0 changes;
* revocation: from the start of re-rendering the router config with the developer marked absent
  (ansible-playbook with the router role's preflight and template, as playbooks/team.yml renders it)
  through the reload (SIGHUP) to the first 401 for the old key; target <= 10 s.

The router is the real one on loopback; no model is called (the key check needs none).
Usage: .venv/bin/python benchmarks/team_onboarding.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support.router_process import RouterProcess
from tests.support.team_deploy import TeamDir, render_clients, run_pyinfra

TARGETS = ("claude", "coder", "general", "fast")  # the inventory's target names


def router_config(clients: list[dict]) -> dict:
    closed = "http://127.0.0.1:9"  # never contacted: only the key check is measured
    return {"clients": clients,
            "backends": {"local": {"type": "openai", "base_url": f"{closed}/v1"}},
            "targets": {name: {"backend": "local", "model": "m"} for name in TARGETS},
            "aliases": {}, "rules": [], "default_target": "general", "gpu": {"enabled": False},
            "server": {"log_level": "warning"}}


def one_run(root: Path) -> tuple[float, int, float, int, float]:
    work = root / "router"
    work.mkdir()
    router = RouterProcess({"clients": []}, work)
    team = TeamDir(root, router.url)
    team.write([{"name": "dana", "machine": "@local"}, {"name": "ed", "machine": "@local"}])
    router.write_config(router_config(render_clients(team, root / "render")))
    router.start()
    try:
        home = root / "home"
        home.mkdir()
        first = run_pyinfra(team, "@local", home, "--data", "developer=dana")
        second = run_pyinfra(team, "@local", home, "--data", "developer=dana")
        if first.returncode or second.returncode:
            raise SystemExit(first.output + second.output)
        key = (team.credentials / "dana.key").read_text().strip()
        assert httpx.get(f"{router.url}/v1/models", headers={"x-api-key": key}).status_code == 200
        team.write([{"name": "dana", "machine": "@local", "absent": True},
                    {"name": "ed", "machine": "@local"}])
        started = time.monotonic()
        router.write_config(router_config(render_clients(team, root / "render2")))
        router.reload()
        while httpx.get(f"{router.url}/v1/models", headers={"x-api-key": key}).status_code != 401:
            if time.monotonic() - started > 60:
                raise SystemExit("the revoked key was still accepted after 60 s")
            time.sleep(0.05)
        revoked = time.monotonic() - started
    finally:
        router.stop()
    return first.seconds, first.changed, second.seconds, second.changed, revoked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="aibox-team-bench-") as tmp:
            results.append(one_run(Path(tmp)))
        print(f"  .. run {i + 1}: onboard {results[-1][0]:.1f} s, revoke {results[-1][4]:.1f} s",
              file=sys.stderr, flush=True)
    med = [statistics.median(r[i] for r in results) for i in range(5)]
    print(f"onboarding one developer (@local, first run): median {med[0]:.1f} s, max "
          f"{max(r[0] for r in results):.1f} s, {int(med[1])} changes   (target <= 20 s)")
    print(f"re-run: median {med[2]:.1f} s, changes {sorted({r[3] for r in results})}   (target 0 changes)")
    print(f"revocation (re-render + SIGHUP -> 401): median {med[4]:.1f} s, max "
          f"{max(r[4] for r in results):.1f} s   (target <= 10 s)")


if __name__ == "__main__":
    main()
