"""Measure how fast a revoked client key is refused: the router side of "a key is revoked and
refused within 10 s of running the playbook" (issue 14; the playbook's own run time adds to it).

Starts the real router on loopback with two clients, then repeats: write the config without the
second client, SIGHUP, poll that client's key every 10 ms on ``GET /v1/models`` and on ``POST /mcp``
until each answers 401; put the client back and wait for that reload to finish. Twice: with a
backend that refuses connections (a stopped model server), and with one that accepts and never
answers (a hung one, whose context-window probe the reload waits out for its 3 s timeout).

Usage: .venv/bin/python benchmarks/key_revocation.py [--cycles 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The test's own helpers (imported once the repository root is on the path, in the functions).
if TYPE_CHECKING:
    from tests.support.router_process import RouterProcess

RELOADED = "config reloaded"


def wait_for_reloads(router: RouterProcess, count: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while router.logs().count(RELOADED) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"reload {count} did not finish:\n{router.logs()[-3000:]}")
        time.sleep(0.05)


def measure(backend_url: str, label: str, cycles: int) -> None:
    from tests.live.test_key_revocation import BOB_KEY, both, config, first_refusal
    from tests.support.router_process import RouterProcess

    with tempfile.TemporaryDirectory(prefix="aibox-revocation-") as tmp, \
            RouterProcess(both(backend_url), Path(tmp)) as router:
        api: list[float] = []
        mcp: list[float] = []
        for _ in range(cycles):
            done = router.logs().count(RELOADED)
            router.write_config(config(backend_url, both(backend_url)["clients"][:1]))
            sighup = time.monotonic()
            router.reload()
            api_s, mcp_s = first_refusal(router, BOB_KEY, sighup)
            api.append(api_s)
            mcp.append(mcp_s)
            wait_for_reloads(router, done + 1)
            router.write_config(both(backend_url))  # bob back, for the next round
            router.reload()
            wait_for_reloads(router, done + 2)
    for name, values in (("GET /v1/models", api), ("POST /mcp", mcp)):
        print(f"{label:<28} {name:<15} SIGHUP -> 401: median {statistics.median(values) * 1000:6.0f} ms, "
              f"max {max(values) * 1000:6.0f} ms ({cycles} revocations)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10)
    args = parser.parse_args()
    from tests.support.silent_backend import SilentBackend

    measure("http://127.0.0.1:9/v1", "backend refusing", args.cycles)
    with SilentBackend() as hung:
        measure(hung.url, "backend hung (3 s probe)", args.cycles)


if __name__ == "__main__":
    main()
