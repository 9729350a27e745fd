"""Measure team onboarding and revocation (docs/team.md, issue 14's targets), in one run on this machine.

* onboarding: ``pyinfra @local deploy/developer.py`` for one developer into an empty temporary HOME
  (the whole command, start to exit: pyinfra start-up, facts, five files written); target <= 20 s;
* re-run: the same command again; target 0 changes;
* revocation: from the start of re-rendering the router config with the developer marked absent
  (ansible-playbook with the router role's config checks and template, as playbooks/team.yml runs them)
  through the reload (SIGHUP) to the first 401 for the old key; target <= 10 s.

The router is the real one on loopback; no model is called (the key check needs none).
Usage: .venv/bin/python benchmarks/team_onboarding.py [--runs 3]
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The test support modules drive the real router, Ansible and pyinfra (imported once the repo is on the path).
RouterProcess = importlib.import_module("tests.support.router_process").RouterProcess
_team = importlib.import_module("tests.support.team_deploy")
TeamDir, render_clients, run_pyinfra = _team.TeamDir, _team.render_clients, _team.run_pyinfra

TARGETS = ("claude", "coder", "general", "fast")  # the inventory's target names


def router_config(clients: list[dict]) -> dict:
    closed = "http://127.0.0.1:9"  # never contacted: only the key check is measured
    return {"clients": clients,
            "backends": {"local": {"type": "openai", "base_url": f"{closed}/v1"}},
            "targets": {name: {"backend": "local", "model": "m"} for name in TARGETS},
            "aliases": {}, "rules": [], "default_target": "general", "gpu": {"enabled": False},
            "server": {"log_level": "warning"}}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(root: Path) -> dict[str, float]:
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
        cpu = children_cpu()
        first = run_pyinfra(team, "@local", home, "--data", "developer=dana")
        onboard_cpu = children_cpu() - cpu
        second = run_pyinfra(team, "@local", home, "--data", "developer=dana")
        if first.returncode or second.returncode:
            raise SystemExit(first.output + second.output)
        key = (team.credentials / "dana.key").read_text().strip()
        assert httpx.get(f"{router.url}/v1/models", headers={"x-api-key": key}).status_code == 200
        team.write([{"name": "dana", "machine": "@local", "absent": True},
                    {"name": "ed", "machine": "@local"}])
        started, cpu = time.monotonic(), children_cpu()
        clients = render_clients(team, root / "render2")
        rendered, render_cpu = time.monotonic(), children_cpu() - cpu
        router.write_config(router_config(clients))
        router.reload()
        while httpx.get(f"{router.url}/v1/models", headers={"x-api-key": key}).status_code != 401:
            if time.monotonic() - started > 60:
                raise SystemExit("the revoked key was still accepted after 60 s")
            time.sleep(0.05)
        refused = time.monotonic()
    finally:
        router.stop()
    return {"onboard_s": first.seconds, "onboard_cpu_s": onboard_cpu, "onboard_changes": first.changed,
            "rerun_s": second.seconds, "rerun_changes": second.changed, "revoke_s": refused - started,
            "render_s": rendered - started, "render_cpu_s": render_cpu, "reload_to_401_s": refused - rendered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="aibox-team-bench-") as tmp:
            results.append(one_run(Path(tmp)))
        print(f"  .. run {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in results[-1].items()),
              file=sys.stderr, flush=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in results)

    def top(key: str) -> float:
        return max(r[key] for r in results)

    print(f"onboarding one developer (@local, first run): median {med('onboard_s'):.1f} s, max "
          f"{top('onboard_s'):.1f} s (CPU {med('onboard_cpu_s'):.1f} s), "
          f"{int(med('onboard_changes'))} changes   (target <= 20 s)")
    rerun_changes = sorted({int(r["rerun_changes"]) for r in results})
    print(f"re-run: median {med('rerun_s'):.1f} s, changes {rerun_changes}   (target 0 changes)")
    print(f"revocation, playbook start -> 401: median {med('revoke_s'):.1f} s, max {top('revoke_s'):.1f} s"
          "   (target <= 10 s)")
    print(f"  of which rendering (ansible-playbook, router role config checks + template): median "
          f"{med('render_s'):.1f} s wall, {med('render_cpu_s'):.1f} s CPU; SIGHUP -> 401: median "
          f"{med('reload_to_401_s') * 1000:.0f} ms")
    print(f"  (load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          "wall times grow with it, CPU times do not)")


if __name__ == "__main__":
    main()
