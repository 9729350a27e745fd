"""Fuzz a real router process with hostile and malformed requests; print each case's outcome and a summary.

The router runs as ``aibox-router serve`` on loopback with the Anthropic API double and the Ollama
double as backends. Each case says what a correct router answers (a status class and the caller's
error shape); afterwards the run checks that the server is still up, that no client key reached the
log, the ledger or an upstream, that the ledger holds one row per upstream call, and that no budget
reservation is left in flight.

Cases: a wrong-typed value for every field of both protocols (from tests/support/hostile_cases.py),
the review's specific inputs (deep nesting, hostile model names, missing ids, oversize bodies and
heads, slow drips), authentication and routing abuse, cloud calls that fail or are abandoned, and a
burst of concurrent requests.

Usage: .venv/bin/python benchmarks/hostile_fuzz.py [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import socket
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.doubles.fake_anthropic import FakeAnthropic, Reply
from tests.doubles.fake_ollama import FakeOllama
from tests.support.gauges import reservations
from tests.support.hostile_cases import (
    ANTHROPIC_BODY,
    ANTHROPIC_FIELDS,
    OPENAI_BODY,
    OPENAI_FIELDS,
    field_name,
    replaced,
    router_config,
)
from tests.support.router_process import RouterProcess

KEY = "fuzz-client-key-0123456789abcdef"
LIMITED_KEY = "fuzz-limited-key-0123456789abcdef"
ROUTER_CLOUD_KEY = "sk-ant-fuzz-router-own-key-0123"
WRONG = {"null": None, "boolean": True, "integer": 7, "number": 2.5, "string": "oops", "array": [1, "x"],
         "object": {"k": 1}}


@dataclass
class Result:
    name: str
    ok: bool
    detail: str


@dataclass
class Expect:
    status: int | None = None  # exact status
    status_class: int = 4  # 4 -> 4xx
    shape: str = "anthropic"  # anthropic, openai, none
    names: str = ""  # text the error message must contain


def config(anthropic_url: str, ollama_url: str) -> dict[str, Any]:
    return router_config(
        anthropic_url, ollama_url, cloud_key_env="FUZZ_CLOUD_KEY",
        server={"header_timeout_s": 2.0, "body_timeout_s": 3.0, "max_header_bytes": 65536,
                "max_body_bytes": 4 * 1024 * 1024, "open_probes_to": []},
        clients=[{"name": "dev", "key": KEY}, {"name": "intern", "key": LIMITED_KEY, "targets": ["local"]}],
        budgets={"daily_budget": 0.05, "alert_threshold": 0.04, "emergency_cutoff": 1.0},
    )


class Fuzz:
    def __init__(self, router: RouterProcess):
        self.router = router
        self.http = httpx.Client(base_url=router.url, timeout=30)
        self.results: list[Result] = []

    # -- checking one answer -----------------------------------------------------------------------

    def check(self, name: str, r: httpx.Response, expect: Expect) -> None:
        problems = []
        if expect.status is not None and r.status_code != expect.status:
            problems.append(f"status {r.status_code}, expected {expect.status}")
        elif expect.status is None and r.status_code // 100 != expect.status_class:
            problems.append(f"status {r.status_code}, expected {expect.status_class}xx")
        message = ""
        if expect.shape != "none":
            try:
                data = r.json()
                if expect.shape == "anthropic":
                    assert data["type"] == "error" and isinstance(data["error"]["type"], str)
                    message = data["error"]["message"]
                else:
                    assert set(data) == {"error"} and isinstance(data["error"]["type"], str)
                    message = data["error"]["message"]
            except Exception as e:  # noqa: BLE001 - a wrong shape is a finding, not a crash
                problems.append(f"not the {expect.shape} error shape ({type(e).__name__}): {r.text[:120]!r}")
        if expect.names and expect.names not in message:
            problems.append(f"message does not name {expect.names!r}: {message[:120]!r}")
        self.results.append(Result(name, not problems, "; ".join(problems) or f"{r.status_code} {message[:70]}"))

    def post(self, name: str, path: str, body: Any, expect: Expect, headers: dict[str, str] | None = None) -> None:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            r = self.http.post(path, content=content, headers={"x-api-key": KEY, **(headers or {})})
        except httpx.HTTPError as e:
            self.results.append(Result(name, False, f"transport error {type(e).__name__}: {e}"))
            return
        self.check(name, r, expect)

    def raw(self, name: str, data: bytes, expect_prefix: bytes, *, drip: bytes = b"") -> None:
        """Send raw bytes; the router must answer with *expect_prefix* and close the connection."""
        s = socket.create_connection(("127.0.0.1", self.router.port), timeout=10)
        try:
            try:
                s.sendall(data)
                if drip:
                    for _ in range(10):
                        time.sleep(0.3)
                        s.sendall(drip)
            except OSError:
                pass
            answer = _read_until_closed(s, 15)
        finally:
            s.close()
        ok = answer is not None and answer.startswith(expect_prefix)
        first_line = (answer or b"<still open after 15 s>").split(b"\r\n", 1)[0]
        self.results.append(Result(name, ok, first_line[:60].decode("latin-1")))

    # -- the cases -----------------------------------------------------------------------------------

    def wrong_types(self) -> None:
        for protocol, path, base, fields in (("anthropic", "/v1/messages", ANTHROPIC_BODY, ANTHROPIC_FIELDS),
                                             ("openai", "/v1/chat/completions", OPENAI_BODY, OPENAI_FIELDS)):
            for field, accepted in fields.items():
                wrong = [k for k in ("integer", "object", "null", "string") if k not in accepted][:2]
                for kind in wrong:
                    body = replaced(base, field, WRONG[kind])
                    name = f"{protocol} {field_name(field)} = {kind}"
                    self.post(name, path, body, Expect(status=400, shape=protocol, names=field_name(field[:-1])
                                                       if len(field) > 1 else field_name(field)))

    def review_cases(self) -> None:
        a, o = "/v1/messages", "/v1/chat/completions"

        def deep(n: int) -> str:
            return "[" * n + "]" * n

        for n in (1_000, 20_000, 100_000):
            self.post(f"anthropic nesting {n} levels", a,
                      json.dumps({**ANTHROPIC_BODY, "x": "D"}).replace('"D"', deep(n)).encode(),
                      Expect(status=400, names="nested too deeply"))
            self.post(f"openai nesting {n} levels", o,
                      json.dumps({**OPENAI_BODY, "x": "D"}).replace('"D"', deep(n)).encode(),
                      Expect(status=400, shape="openai", names="nested too deeply"))
        self.post("openai tool arguments nested 100000 levels", o,
                  replaced(OPENAI_BODY, ("messages", 2, "tool_calls", 0, "function", "arguments"),
                           '{"a": ' + deep(100_000) + "}"), Expect(status=400, shape="openai", names="arguments"))
        self.post("anthropic tool input nested 200 levels", a,
                  replaced(ANTHROPIC_BODY, ("messages", 1, "content", 1, "input"), {"a": json.loads(deep(200))}),
                  Expect(status=400, names="input"))
        for key in ("id", "name"):
            body = json.loads(json.dumps(ANTHROPIC_BODY))
            del body["messages"][1]["content"][1][key]
            self.post(f"anthropic tool_use without {key}", a, body, Expect(status=400, names=key))
        self.post("anthropic tool_choice as a string", a, {**ANTHROPIC_BODY, "tool_choice": "auto"},
                  Expect(status=400, names="tool_choice"))
        self.post("openai tool_calls as a string", o, replaced(OPENAI_BODY, ("messages", 2, "tool_calls"), "x"),
                  Expect(status=400, shape="openai", names="tool_calls"))
        self.post("anthropic 100 KB model name", a, {**ANTHROPIC_BODY, "model": "claude-opus-" + "A" * 100_000},
                  Expect(status=400, names="model"))
        for raw, label in ((b"", "empty body"), (b"{", "truncated JSON"), (b"\xff\xfe\x00", "binary"),
                           (b"[]", "a JSON array"), (b'"text"', "a JSON string"), (b"null", "JSON null")):
            self.post(f"anthropic {label}", a, raw, Expect(status=400))
            self.post(f"openai {label}", o, raw, Expect(status=400, shape="openai"))
        self.post("anthropic NaN literal", a, b'{"model": "m", "max_tokens": NaN, "messages": []}', Expect(status=400))
        self.post("anthropic role 'tool'", a, replaced(ANTHROPIC_BODY, ("messages", 0, "role"), "tool"),
                  Expect(status=400, names="role"))
        self.post("anthropic max_tokens 0", a, {**ANTHROPIC_BODY, "max_tokens": 0}, Expect(status=400))
        self.post("openai n=3", o, {**OPENAI_BODY, "n": 3}, Expect(status=400, shape="openai", names="n"))
        self.post("openai legacy functions", o, {**OPENAI_BODY, "functions": []}, Expect(status=400, shape="openai"))
        self.post("openai image file:// URL", o,
                  replaced(OPENAI_BODY, ("messages", 1, "content", 1, "image_url", "url"), "file:///etc/passwd"),
                  Expect(status=400, shape="openai", names="image_url"))

    def auth_and_routing(self) -> None:
        a, o = "/v1/messages", "/v1/chat/completions"
        self.post("no key", a, ANTHROPIC_BODY, Expect(status=401), headers={"x-api-key": ""})
        self.post("wrong key", a, ANTHROPIC_BODY, Expect(status=401), headers={"x-api-key": "nope-nope-nope-nope"})
        self.post("wrong bearer (openai)", o, OPENAI_BODY, Expect(status=401, shape="openai"),
                  headers={"x-api-key": "", "authorization": "Bearer wrong-wrong-wrong-wrong"})
        self.post("limited client forces the cloud by header", a, ANTHROPIC_BODY, Expect(status=403),
                  headers={"x-api-key": LIMITED_KEY, "x-aibox-target": "claude"})
        self.post("limited client forces the cloud by model name", o, {**OPENAI_BODY, "model": "claude"},
                  Expect(status=403, shape="openai"), headers={"x-api-key": LIMITED_KEY})
        for path in ("/ready", "/metrics"):
            self.check(f"GET {path} without a key", self.http.get(path), Expect(status=401))
        self.check("GET unknown route", self.http.get("/v1/nothing", headers={"x-api-key": KEY}), Expect(status=404))
        self.check("GET /v1/messages", self.http.get(a, headers={"x-api-key": KEY}), Expect(status=405))
        self.check("GET /v1/chat/completions", self.http.get(o, headers={"x-api-key": KEY}),
                   Expect(status=405, shape="openai"))
        self.check("DELETE /v1/models", self.http.delete("/v1/models", headers={"x-api-key": KEY}),
                   Expect(status=405, shape="openai"))

    def hostile_model_names(self) -> None:
        """Served (200) with the configured alias rule in the header; nothing of the name leaks."""
        for model in ("claude-opus-\u2603", "claude-opus-4\r\nx-injected: 1", "claude-opus-\u00e9\u0000"):
            for stream in (False, True):
                body = {"model": model, "max_tokens": 50, "stream": stream,
                        "messages": [{"role": "user", "content": "hi"}]}
                r = self.http.post("/v1/messages", json=body, headers={"x-api-key": KEY})
                text = r.text
                ok = (r.status_code == 200 and r.headers.get("x-aibox-rule") == "alias:claude-opus-*"
                      and "x-injected" not in r.headers and ("message_stop" in text if stream else "content" in text))
                self.results.append(Result(f"model {model!r} stream={stream}", ok,
                                           f"{r.status_code} rule={r.headers.get('x-aibox-rule')}"))

    def cloud_failures(self, anthropic: FakeAnthropic) -> None:
        """Cloud calls that end badly, one at a time (each holds about half the $0.05 budget while in
        flight): upstream errors, a stream cut or ended by an error event, and clients that leave
        before the answer. Each must settle and free its reservation (checked after the run)."""
        headers = {"x-api-key": KEY, "x-aibox-target": "claude"}

        def body(stream: bool) -> dict[str, Any]:
            return {"model": "x", "max_tokens": 50, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}

        for stream in (False, True):
            for status in (400, 500, 529):
                anthropic.replies.append(Reply.error(status))
                r = self.http.post("/v1/messages", json=body(stream), headers=headers)
                self.results.append(Result(f"cloud upstream {status} stream={stream}", r.status_code // 100 in (4, 5),
                                           f"{r.status_code}"))
        for label, reply in (("error event mid-stream", Reply(stream_error="overloaded_error")),
                             ("stream cut mid-answer", Reply(cut_after_events=3))):
            anthropic.replies.append(reply)
            r = self.http.post("/v1/messages", json=body(True), headers=headers)
            self.results.append(Result(f"cloud {label}", r.status_code == 200 and "event: error" in r.text
                                       and "event: message_stop" not in r.text,
                                       f"{r.status_code}"))
        anthropic.delay_s = 1.0
        try:
            for stream in (False, True):
                try:
                    self.http.post("/v1/messages", json=body(stream), headers=headers, timeout=0.3)
                    left = False
                except httpx.TimeoutException:
                    left = True
                time.sleep(1.5)  # the upstream answers; the router settles the abandoned call
                self.results.append(Result(f"cloud call abandoned by its client stream={stream}", left, ""))
        finally:
            anthropic.delay_s = 0.0
        with self.http.stream("POST", "/v1/messages", json=body(True), headers=headers) as r:
            first = next(r.iter_bytes(), b"")  # read the head and the first events, then hang up
        self.results.append(Result("cloud stream abandoned mid-answer", r.status_code == 200 and bool(first),
                                   f"{r.status_code}"))

    def transport(self) -> None:
        head = (b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: " + KEY.encode()
                + b"\r\ncontent-type: application/json\r\n")
        self.raw("announced 40 MB Content-Length", head + b"content-length: 40000000\r\n\r\n", b"HTTP/1.1 413")
        chunk = b"%x\r\n" % 65536 + b" " * 65536 + b"\r\n"
        self.raw("40 MB chunked body", head + b"transfer-encoding: chunked\r\n\r\n" + chunk * 610, b"HTTP/1.1 413")
        self.raw("30 MB header", head + b"x-filler: " + b"a" * 30_000_000 + b"\r\n\r\n", b"HTTP/1.1 431")
        self.raw("slow body drip", head + b"content-length: 5000\r\n\r\n{", b"HTTP/1.1 408", drip=b" ")
        self.raw("slow header drip", head[:30], b"HTTP/1.1 408", drip=b"a")
        self.raw("garbage request line", b"\x16\x03\x01\x02\x00GARBAGE\r\n\r\n", b"HTTP/1.1 400")

    def slowloris(self, mid_header: int = 100, mid_body: int = 50) -> None:
        head = (b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: " + KEY.encode()
                + b"\r\ncontent-length: 5000\r\n")
        conns = [socket.create_connection(("127.0.0.1", self.router.port), timeout=10)
                 for _ in range(mid_header + mid_body)]
        for i, s in enumerate(conns):
            s.sendall(head[:25] if i < mid_header else head + b"\r\n{")
        started = time.monotonic()
        answers = [_read_until_closed(s, 20) for s in conns]
        elapsed = time.monotonic() - started
        for s in conns:
            s.close()
        still_open = sum(1 for a in answers if a is None)
        self.results.append(Result(f"slowloris: {mid_header} mid-header + {mid_body} mid-body connections",
                                   still_open == 0, f"{still_open} still open; all closed after {elapsed:.1f} s"))

    def burst(self, n: int = 200) -> None:
        async def run() -> list[int]:
            limits = httpx.Limits(max_connections=n)
            async with httpx.AsyncClient(base_url=self.router.url, timeout=60, limits=limits) as c:
                async def one(i: int) -> int:
                    body = {"model": f"local-{i}", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
                    return (await c.post("/v1/messages", json=body, headers={"x-api-key": KEY})).status_code

                return list(await asyncio.gather(*(one(i) for i in range(n))))

        started = time.monotonic()
        codes = asyncio.run(run())
        elapsed = time.monotonic() - started
        by_status = {c: codes.count(c) for c in sorted(set(codes))}
        self.results.append(Result(f"burst of {n} concurrent requests", set(by_status) <= {200, 503},
                                   f"statuses {by_status} in {elapsed:.1f} s"))


def _read_until_closed(s: socket.socket, limit_s: float) -> bytes | None:
    s.settimeout(0.2)
    data, deadline = b"", time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return data
        if not chunk:
            return data
        data += chunk
    return None


def final_checks(fuzz: Fuzz, anthropic: FakeAnthropic, ollama: FakeOllama) -> list[Result]:
    router = fuzz.router
    out = []
    up = httpx.get(f"{router.url}/health", timeout=5).status_code == 200 and router.proc.poll() is None
    out.append(Result("server still up", up, ""))
    time.sleep(1.5)  # abandoned streams settle; local rows reach the ledger
    db = sqlite3.connect(router.workdir / "state" / "ledger.sqlite3")
    rows = db.execute("SELECT COUNT(*) FROM requests WHERE status != 'refused'").fetchone()[0]
    ledger_text = json.dumps(db.execute("SELECT * FROM requests").fetchall())
    calls = sum(1 for r in anthropic.requests if r.path == "/v1/messages") + len(ollama.requests)
    out.append(Result("ledger rows == upstream calls", rows == calls, f"{rows} rows, {calls} upstream calls"))
    # Every request has ended: the router must hold no reservation (read from its own gauges), and a
    # cloud call whose worst case (~$0.025: 4096 overhead tokens at the 1-hour cache write rate) fits
    # in what is left of the $0.05 budget must be admitted. Any stuck reservation is >= ~$0.025.
    held = reservations(httpx.get(f"{router.url}/metrics", headers={"x-api-key": KEY}, timeout=5).text)
    before = len(anthropic.requests)
    r = httpx.post(f"{router.url}/v1/messages", headers={"x-api-key": KEY, "x-aibox-target": "claude"},
                   json={"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    out.append(Result("no reservation stuck in flight",
                      held == (0.0, 0.0) and r.status_code == 200 and len(anthropic.requests) == before + 1,
                      f"reserved ${held[0]}, {held[1]} in flight; probe {r.status_code} "
                      f"{r.headers.get('x-aibox-target')}"))
    upstream_text = json.dumps([r.headers for r in anthropic.requests]) + json.dumps(ollama.requests)
    logs = router.logs()
    for key in (KEY, LIMITED_KEY):
        leaked = [where for where, text in (("log", logs), ("ledger", ledger_text), ("upstream", upstream_text))
                  if key in text]
        out.append(Result(f"client key {key[:10]}... leaked nowhere", not leaked, ", ".join(leaked)))
    out.append(Result("no traceback in the log", "Traceback" not in logs, ""))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args()
    with FakeAnthropic() as anthropic, FakeOllama(models=["qwen2.5-coder:7b"]) as ollama, \
            tempfile.TemporaryDirectory() as work:
        router = RouterProcess(config(anthropic.url, ollama.url), Path(work), env={"FUZZ_CLOUD_KEY": ROUTER_CLOUD_KEY})
        with router:
            fuzz = Fuzz(router)
            for step in (fuzz.wrong_types, fuzz.review_cases, fuzz.auth_and_routing, fuzz.hostile_model_names,
                         functools.partial(fuzz.cloud_failures, anthropic), fuzz.transport, fuzz.slowloris,
                         fuzz.burst):
                print(f"==> {getattr(step, '__name__', None) or step.func.__name__}", file=sys.stderr, flush=True)
                step()
            checks = final_checks(fuzz, anthropic, ollama)
    results = fuzz.results + checks
    for r in results:
        print(f"{'PASS' if r.ok else 'FAIL'}  {r.name[:70]:<70}  {r.detail[:90]}")
    cases = fuzz.results
    print(f"\n{len(cases)} hostile cases: {sum(r.ok for r in cases)} handled as expected, "
          f"{sum(not r.ok for r in cases)} mishandled")
    print(f"after the run: {sum(r.ok for r in checks)}/{len(checks)} checks passed "
          f"({', '.join(r.name for r in checks if not r.ok) or 'server up, nothing leaked, nothing stuck'})")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=1))
    sys.exit(0 if all(r.ok for r in results) else 1)


if __name__ == "__main__":
    main()
