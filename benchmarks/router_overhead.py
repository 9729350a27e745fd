"""Measure what the router costs, in one run on loopback, against a fast fake upstream.

Prints, for small bodies and for ~100 KB bodies (Claude Code's real requests are 78-117 KB: a long
system prompt and about 24 tool definitions):

* latency the router adds per request (p50, p99), non-streaming, and time to first byte streaming;
* the router's CPU time per request (from /proc/<pid>/stat);
* throughput with 10 and 50 concurrent clients, through the router and straight to the upstream;
* the router's RSS idle and after load, and its start-up time (spawn to /health answering).

Targets on a 2-core machine: added p50 <= 1 ms, CPU <= 0.7 ms per small request and <= 2 ms per
100 KB request, idle RSS <= 60 MB, ready in <= 1 s. Compare numbers from one run only: the
machines are shared and noisy.

Usage: .venv/bin/python benchmarks/router_overhead.py [--requests 1000] [--seconds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support.router_process import free_port

CLIENT_KEY = "bench-client-key-0123456789abcdef"
TICKS = os.sysconf("SC_CLK_TCK")


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def claude_code_like_body(target_bytes: int) -> dict:
    """A request shaped like Claude Code's: long system prompt, ~24 tools, a few turns."""
    tools = [{"name": f"tool_{i}", "description": "Reads, edits or searches files in the workspace. " * 12,
              "input_schema": {"type": "object", "properties": {
                  "path": {"type": "string", "description": "Absolute path to the file. " * 4},
                  "pattern": {"type": "string"}, "limit": {"type": "integer"}}, "required": ["path"]}}
             for i in range(24)]
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "tools": tools,
            "system": [{"type": "text", "text": "You are Claude Code. ", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "Write a function that merges two sorted lists."}]}
    filler = target_bytes - len(json.dumps(body))
    if filler > 0:
        body["system"][0]["text"] += ("Follow the repository conventions carefully. " * (filler // 46 + 1))[:filler]
    return body


def openai_body_for(anthropic_body: dict) -> dict:
    """The same request as the router would send upstream, for the direct baseline."""
    system = anthropic_body["system"][0]["text"] if isinstance(anthropic_body.get("system"), list) else ""
    msgs = ([{"role": "system", "content": system}] if system else []) + anthropic_body["messages"]
    out = {"model": "bench", "max_tokens": anthropic_body["max_tokens"], "messages": msgs}
    if anthropic_body.get("tools"):
        out["tools"] = [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                                          "parameters": t["input_schema"]}}
                        for t in anthropic_body["tools"]]
    return out


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 30) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            time.sleep(0.005)
    raise SystemExit(f"{url} not healthy after {timeout}s")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def sequential(url: str, body: bytes, headers: dict, n: int, stream: bool) -> list[float]:
    """Per-request latency in ms (time to first body byte when streaming)."""
    out = []
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            if stream:
                with client.stream("POST", url, content=body, headers=headers) as r:
                    first = True
                    for _chunk in r.iter_raw():
                        if first:
                            out.append((time.perf_counter() - t0) * 1000)
                            first = False
            else:
                r = client.post(url, content=body, headers=headers)
                out.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise SystemExit(f"{url} answered {r.status_code}: {r.read()[:300]!r}")
    return out


async def _load(url: str, body: bytes, headers: dict, concurrency: int, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds
    # aiohttp, not httpx: httpx's own pool degrades badly at 50 concurrent connections, and the
    # load generator must not be the bottleneck it measures.
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise SystemExit(f"load: {url} answered {r.status}")
                done += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - t0)


def throughput(url: str, body: bytes, headers: dict, concurrency: int, seconds: float) -> float:
    return asyncio.run(_load(url, body, headers, concurrency, seconds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000, help="sequential requests per latency series")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aibox-bench-"))
    up_port, router_port = free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "tests.doubles.fast_openai_upstream", "--port", str(up_port)],
                                cwd=ROOT)
    config = {
        "server": {"host": "127.0.0.1", "port": router_port, "state_dir": str(work / "state"),
                   "log_level": "warning"},
        "clients": [{"name": "bench", "key": CLIENT_KEY}],
        "backends": {"fast": {"type": "openai", "base_url": f"http://127.0.0.1:{up_port}/v1"}},
        "targets": {"local": {"backend": "fast", "model": "bench"}},
        "default_target": "local",
        "gpu": {"enabled": False},
    }
    cfg_path = work / "router.yml"
    cfg_path.write_text(yaml.safe_dump(config))
    results: dict = {}
    router = None
    try:
        wait_healthy(f"http://127.0.0.1:{up_port}/v1/models", upstream)
        progress("starting the router")
        t_spawn = time.perf_counter()
        router = subprocess.Popen([sys.executable, "-m", "aibox_router", "serve", "-c", str(cfg_path)], cwd=work)
        results["startup_s"] = wait_healthy(f"http://127.0.0.1:{router_port}/health", router)
        assert time.perf_counter() - t_spawn >= results["startup_s"]
        time.sleep(0.5)
        results["rss_idle_mb"] = proc_rss_mb(router.pid)

        router_url = f"http://127.0.0.1:{router_port}/v1/messages"
        direct_url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        r_headers = {"x-api-key": CLIENT_KEY, "content-type": "application/json", "anthropic-version": "2023-06-01"}
        d_headers = {"content-type": "application/json"}
        for label, size in (("small", 0), ("100KB", 100_000)):
            body = (claude_code_like_body(size) if size else
                    {"model": "claude-sonnet-4-5", "max_tokens": 256,
                     "messages": [{"role": "user", "content": "Write a function that adds two numbers."}]})
            router_body = json.dumps(body).encode()
            direct_body = json.dumps(openai_body_for(body)).encode()
            row: dict = {"router_body_bytes": len(router_body)}
            for stream in (False, True):
                kind = "stream_ttfb" if stream else "nonstream"
                rb = json.dumps({**body, "stream": True}).encode() if stream else router_body
                db = json.dumps({**openai_body_for(body), "stream": True}).encode() if stream else direct_body
                progress(f"{label} {kind}: warm-up")
                sequential(router_url, rb, r_headers, 50, stream)
                sequential(direct_url, db, d_headers, 50, stream)
                progress(f"{label} {kind}: {args.requests} sequential requests direct, then through the router")
                direct = sequential(direct_url, db, d_headers, args.requests, stream)
                cpu0 = proc_cpu_seconds(router.pid)
                routed = sequential(router_url, rb, r_headers, args.requests, stream)
                cpu_ms = (proc_cpu_seconds(router.pid) - cpu0) * 1000 / args.requests
                row[kind] = {
                    "direct_p50_ms": statistics.median(direct), "direct_p99_ms": percentile(direct, 0.99),
                    "router_p50_ms": statistics.median(routed), "router_p99_ms": percentile(routed, 0.99),
                    "added_p50_ms": statistics.median(routed) - statistics.median(direct),
                    "added_p99_ms": percentile(routed, 0.99) - percentile(direct, 0.99),
                    "router_cpu_ms_per_request": cpu_ms,
                }
            for conc in (10, 50):
                progress(f"{label}: throughput with {conc} concurrent clients, {args.seconds:.0f}s each way")
                row[f"throughput_c{conc}"] = {
                    "direct_rps": throughput(direct_url, direct_body, d_headers, conc, args.seconds),
                    "router_rps": throughput(router_url, router_body, r_headers, conc, args.seconds),
                }
            results[label] = row
        results["rss_after_load_mb"] = proc_rss_mb(router.pid)
    finally:
        for proc in (router, upstream):
            if proc is not None:
                proc.terminate()
                proc.wait(10)

    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_report(r: dict) -> None:
    print(f"\nrouter start-up to /health: {r['startup_s'] * 1000:.0f} ms   (target <= 1000 ms)")
    print(f"router RSS idle: {r['rss_idle_mb']:.1f} MB (target <= 60 MB); after load: {r['rss_after_load_mb']:.1f} MB")
    for label in ("small", "100KB"):
        row = r[label]
        print(f"\n[{label} bodies, {row['router_body_bytes']} bytes]")
        print(f"{'':24}{'direct p50':>11}{'router p50':>11}{'added p50':>10}{'added p99':>10}{'router CPU/req':>15}")
        for kind in ("nonstream", "stream_ttfb"):
            k = row[kind]
            print(f"{kind:24}{k['direct_p50_ms']:>9.2f}ms{k['router_p50_ms']:>9.2f}ms{k['added_p50_ms']:>8.2f}ms"
                  f"{k['added_p99_ms']:>8.2f}ms{k['router_cpu_ms_per_request']:>13.2f}ms")
        for conc in (10, 50):
            t = row[f"throughput_c{conc}"]
            print(f"throughput, {conc:>2} clients: direct {t['direct_rps']:>7.0f} req/s, "
                  f"through router {t['router_rps']:>7.0f} req/s")


if __name__ == "__main__":
    main()
