"""How far the router's token estimate is from the models' own counts, and how fast an over-long
request is decided.

The estimate (``aibox_router.context``) must err high: a local model given a prompt longer than its
window truncates it silently. This script builds a set of real request bodies, counts each with the
real tokenizers of the local model families, and prints the distribution of estimate / real count:

* Claude Code's own request (tests/fixtures/claude_code_request.json, 24 tools), and that request
  grown by Read tool calls whose results are real source files (one to sixteen of them);
* requests built by the official OpenAI SDK (captured on the wire, then read by the router's own
  OpenAI adapter): code review prompts with real files, function tools;
* long code and text files sent as one message: this repository's Python, YAML and Markdown, the
  installed libraries' Python, C headers from /usr/include, and GnuPG's help texts in a dozen
  languages (Japanese, Russian, ...: text that is mostly non-ASCII).

What a model reads is the chat-templated conversation the router sends (``to_openai_messages`` and
``function_tools``, the very translation of backends/openai.py), rendered as ChatML with the tool
definitions as JSON; that text is what the tokenizers count. Tokenizers (each the model's real one):

* SmolLM2-135M's (the test model; llama.cpp's tokenizer through llama-cpp-python, vocab only, from
  the cache scripts/ensure-local-model fills);
* Qwen2/2.5's BPE (qwen.tiktoken, shipped in dashscope), Mistral's SentencePiece v1 and v3 (7B
  v0.1-v0.3) and Tekken (Nemo and later), shipped in mistral-common:
  ``pip install -e '.[bench-tokenizers]'``. A family whose tokenizer is missing is skipped, and said so.
* With ``--llama``, also the real llama.cpp server's own ``usage.prompt_tokens`` (llama-cpp-python
  with SmolLM2, started as the live tests start it) for a spread of the smaller bodies (prompt
  evaluation on a shared CPU takes long; ``--llama-bodies``, ``--llama-max-tokens``).
  Its chat template is SmolLM2's own, which leaves the tool definitions out, so bodies with tools
  are counted lower there than the model would count them with tools.

The decision time is that of ``pipeline.plan_request`` on an over-long request whose every target is
too small (what the router does before answering "prompt is too long"); no backend is called.

``--calibrate`` also prints the byte-class weights that make the estimate an upper fit of the
calibration half of the bodies (chosen by a hash of each body's name; the other half is the test
set the distribution is printed for). It needs numpy and scipy (in the bench-tokenizers extra).

Usage: .venv/bin/python benchmarks/token_estimate.py [--calibrate] [--llama] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aibox_router import context
from aibox_router.wire.chat_common import function_tools
from aibox_router.wire.openai_chat import to_openai_messages

CC_FIXTURE = ROOT / "tests" / "fixtures" / "claude_code_request.json"

# ---------------------------------------------------------------------------------------------
# The bodies


def _files(patterns: list[tuple[Path, str]], limit: int) -> list[Path]:
    found: list[Path] = []
    for base, pattern in patterns:
        found += sorted(p for p in base.glob(pattern) if p.is_file() and 2_000 < p.stat().st_size < 400_000)
    return found[:limit]


def _site_packages() -> Path:
    import aiohttp

    return Path(aiohttp.__file__).parent.parent


def source_files() -> list[Path]:
    sp = _site_packages()
    return (_files([(ROOT / "router", "**/*.py")], 30) + _files([(ROOT / "tests", "**/*.py")], 15)
            + _files([(ROOT, "docs/*.md"), (ROOT, "README.md")], 8) + _files([(ROOT / "roles", "**/*.yml")], 8)
            + _files([(sp / "aiohttp", "*.py"), (sp / "jinja2", "*.py"), (sp / "yaml", "*.py"),
                      (sp / "starlette", "*.py"), (sp / "click", "*.py")], 30)
            + _files([(Path("/usr/include"), "*.h")], 15)
            # Translated prose (GnuPG's help texts: Japanese, Russian, German, ...): non-ASCII text.
            + _files([(Path("/usr/share/gnupg"), "help.*.txt")], 16))


def claude_code_bodies(files: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    base = json.loads(CC_FIXTURE.read_text())
    bodies = [("claude-code: hello (24 tools)", base)]
    for n in (1, 2, 4, 8, 16):
        messages = list(base["messages"])
        for i, path in enumerate(files[:n]):
            tool_id = f"toolu_bench{i:04d}"
            messages.append({"role": "assistant", "content": [
                {"type": "text", "text": f"Let me read {path.name}."},
                {"type": "tool_use", "id": tool_id, "name": "Read", "input": {"file_path": str(path)}}]})
            numbered = "\n".join(f"{k + 1:6}\t{line}" for k, line in enumerate(path.read_text(errors="replace")
                                                                                .splitlines()))
            messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": tool_id, "content": numbered}]})
        messages.append({"role": "user", "content": "Now explain how these files fit together."})
        bodies.append((f"claude-code: +{n} Read results", {**base, "messages": messages}))
    return bodies


def openai_sdk_bodies(files: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    """Bodies the official OpenAI SDK sends, captured from its transport, read by the router's adapter."""
    import httpx
    import openai

    from aibox_router.wire import openai_chat as openai_api

    captured: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        captured.append(request.content)
        return httpx.Response(200, json={"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                         "choices": [{"index": 0, "finish_reason": "stop",
                                                      "message": {"role": "assistant", "content": "ok"}}]})

    client = openai.OpenAI(api_key="bench", base_url="http://127.0.0.1:9/v1",
                           http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    cc_tools = json.loads(CC_FIXTURE.read_text())["tools"]
    tools = [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                               "parameters": t["input_schema"]}} for t in cc_tools[:8]]
    bodies = []
    for i, path in enumerate(files):
        text = path.read_text(errors="replace")
        kwargs: dict[str, Any] = {"tools": tools} if i % 2 else {}
        client.chat.completions.create(model="coder", max_tokens=1024, messages=[
            {"role": "system", "content": "You are a careful senior engineer. Review code for bugs."},
            {"role": "user", "content": f"Review {path.name}:\n```\n{text}\n```"}], **kwargs)
        internal, _ = openai_api.parse_request(captured[-1])
        bodies.append((f"openai-sdk: review {_label(path)}{' +tools' if kwargs else ''}", internal))
    return bodies


def _label(path: Path) -> str:
    """A unique, readable name: relative to the repository, else to site-packages, else absolute."""
    for base in (ROOT, _site_packages()):
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return str(path)


def file_bodies(files: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"file: {_label(p)}", {"model": "m", "max_tokens": 1024, "messages": [
        {"role": "user", "content": p.read_text(errors="replace")}]}) for p in files]


def all_bodies() -> list[tuple[str, dict[str, Any]]]:
    files = source_files()
    return claude_code_bodies(files[::3]) + openai_sdk_bodies(files[1::6]) + file_bodies(files)


# ---------------------------------------------------------------------------------------------
# What the model reads, and the tokenizers that count it


def rendered(request: dict[str, Any]) -> str:
    """The prompt as a ChatML template renders the router's translation of *request*."""
    out = []
    tools = function_tools(request)
    for message in to_openai_messages(request):
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
        calls = "".join(json.dumps(c["function"]) for c in message.get("tool_calls") or [])
        out.append(f"<|im_start|>{message['role']}\n{content or ''}{calls}<|im_end|>\n")
    if tools:
        out.insert(0, "<|im_start|>system\n# Tools\n<tools>\n" + "\n".join(json.dumps(t) for t in tools)
                   + "\n</tools><|im_end|>\n")
    return "".join(out) + "<|im_start|>assistant\n"


Counter = Callable[[list[str]], list[int]]


def smollm2_counter() -> Counter | None:
    """SmolLM2's tokenizer, in the llama-cpp-python venv the local model tests use."""
    sys.path.insert(0, str(ROOT))
    from tests.support import local_model

    if not local_model.venv_python().exists() or not local_model.model_path().exists():
        return None
    script = ("import json, sys, llama_cpp\n"
              f"llm = llama_cpp.Llama({str(local_model.model_path())!r}, vocab_only=True, verbose=False)\n"
              "texts = json.load(sys.stdin)\n"
              "print(json.dumps([len(llm.tokenize(t.encode(), add_bos=False, special=True)) for t in texts]))\n")

    def count(texts: list[str]) -> list[int]:
        out = subprocess.run([str(local_model.venv_python()), "-c", script], input=json.dumps(texts), text=True,
                             capture_output=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    return count


def qwen_counter() -> Counter | None:
    try:
        import base64

        import dashscope
        import tiktoken
    except ImportError:
        return None
    ranks_file = Path(dashscope.__file__).parent / "resources" / "qwen.tiktoken"
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in
             (line.split() for line in ranks_file.read_text().splitlines() if line)}
    # Qwen2's pre-tokenizer: like cl100k's, but digits one at a time.
    pattern = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
               r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
    specials = {"<|im_start|>": len(ranks), "<|im_end|>": len(ranks) + 1, "<|endoftext|>": len(ranks) + 2}
    enc = tiktoken.Encoding("qwen2", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
    return lambda texts: [len(enc.encode(t, allowed_special="all")) for t in texts]


def _mistral_data(name: str) -> Path | None:
    try:
        import mistral_common
    except ImportError:
        return None
    path = Path(mistral_common.__file__).parent / "data" / name
    return path if path.exists() else None


def sentencepiece_counter(name: str) -> Counter | None:
    path = _mistral_data(name)
    try:
        import sentencepiece
    except ImportError:
        return None
    if path is None:
        return None
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    # ChatML markers are not in these vocabularies; Mistral's own [INST] markers are one token each.
    return lambda texts: [len(sp.encode(t.replace("<|im_start|>", "[INST]").replace("<|im_end|>", "[/INST]")))
                          for t in texts]


def tekken_counter() -> Counter | None:
    path = _mistral_data("tekken_240911.json")
    if path is None:
        return None
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    tok = Tekkenizer.from_file(str(path))
    return lambda texts: [len(tok.encode(t.replace("<|im_start|>", "[INST]").replace("<|im_end|>", "[/INST]"),
                                         bos=False, eos=False)) for t in texts]


# (family label, model name the router would see, counter factory)
FAMILIES: list[tuple[str, str, Callable[[], Counter | None]]] = [
    ("SmolLM2 (49K BPE)", "smollm2", smollm2_counter),
    ("Qwen2.5 (151K BPE)", "qwen2.5-coder:14b", qwen_counter),
    ("Mistral Tekken (131K)", "mistral-nemo", tekken_counter),
    ("Mistral SP v1 (32K)", "mistral:7b", lambda: sentencepiece_counter("tokenizer.model.v1")),
    ("Mistral SP v3 (32K)", "mistral:7b", lambda: sentencepiece_counter("mistral_instruct_tokenizer_240323.model.v3")),
]


def llama_server_counts(url: str, bodies: list[tuple[str, dict[str, Any]]]) -> dict[str, int]:
    """usage.prompt_tokens of a running llama-cpp-python server for each body that fits its window."""
    import httpx

    from aibox_router.config import TargetConfig
    from aibox_router.wire.openai_chat import to_openai_request

    counts = {}
    target = TargetConfig(backend="llama", model="smollm2")
    for name, body in bodies:
        request = to_openai_request({**body, "model": "smollm2", "max_tokens": 1}, target, stream=False)
        response = httpx.post(f"{url}/chat/completions", json=request, timeout=600, trust_env=False)
        if response.status_code == 200:
            counts[name] = response.json()["usage"]["prompt_tokens"]
            print(f"  {name}: {counts[name]} prompt tokens", flush=True)
    return counts


# ---------------------------------------------------------------------------------------------
# Measuring


def classes_of(body: dict[str, Any]) -> tuple[context.ByteClasses, context.PromptParts]:
    parts = context.prompt_parts(body)
    return context.ByteClasses.of(parts.text), parts


def half_of(name: str) -> str:
    """A body's half, by a hash of its name: stable when bodies are added to or removed from the set."""
    return "calibration" if zlib.crc32(name.encode()) % 2 == 0 else "test"


def distribution(ratios: list[float]) -> str:
    q = statistics.quantiles(ratios, n=20, method="inclusive") if len(ratios) > 1 else ratios * 19
    return (f"min {min(ratios):.3f}  p5 {q[0]:.3f}  median {statistics.median(ratios):.3f}  "
            f"p95 {q[18]:.3f}  max {max(ratios):.3f}")


# Which weight set of context.py each family's counts calibrate.
GROUPS = {"byte-level BPE (any)": ("smollm2", "qwen2.5-coder:14b", "mistral-nemo"), "Qwen2": ("qwen2.5-coder:14b",),
          "Tekken": ("mistral-nemo",), "SentencePiece 32K": ("mistral:7b",)}
CLASSES = ("letters", "digits", "punct", "space", "newline", "non_ascii")
# Beyond covering every calibration body: bodies unlike any of them (another language, say) need room.
HEADROOM = 1.05


def calibrate(rows: list[dict[str, Any]]) -> None:
    """Per weight set, a linear programme over the calibration half: the weights (each between 0.05
    and 1 token per byte) that minimise the summed estimate/real ratio while no calibration body is
    undercounted, taking per body the highest count among the set's tokenizers; then HEADROOM more."""
    import numpy as np
    from scipy.optimize import linprog

    for group, models in GROUPS.items():
        real: dict[str, int] = {}
        sample: dict[str, dict[str, Any]] = {}
        for r in rows:
            if r["model"] in models and r["half"] == "calibration" and "classes" in r:
                real[r["body"]] = max(real.get(r["body"], 0), r["real"])
                sample[r["body"]] = r
        if not sample:
            continue
        names = list(sample)
        x = np.array([[getattr(sample[n]["classes"], c) for c in CLASSES] for n in names], dtype=float)
        overhead = np.array([sample[n]["parts"].messages * 8 for n in names], dtype=float)
        y = np.maximum(np.array([real[n] for n in names], dtype=float) - overhead, 1.0)
        result = linprog(c=(x / y[:, None]).sum(axis=0), A_ub=-x, b_ub=-y, bounds=[(0.05, 1.0)] * len(CLASSES),
                         method="highs")
        if not result.success:
            print(f"  {group}: no weights cover every calibration body ({result.message})")
            continue
        w = np.minimum(result.x * HEADROOM, 1.0)
        print(f"  {group}: " + ", ".join(f"{c}={v:.3f}" for c, v in zip(CLASSES, w, strict=True))
              + f"  (linear programme over {len(names)} calibration bodies, then x{HEADROOM})")


def decision_time(n: int = 500) -> tuple[float, float, float, float]:
    """Median and p99 ms of plan_request on an over-long Claude Code request no target can hold: wall
    clock, and this thread's CPU time (what the router spends, whatever else runs on the machine)."""
    from aibox_router import pipeline
    from aibox_router.config_load import parse_config
    from aibox_router.rules import RuleEngine

    cfg = parse_config({
        "backends": {"llama": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"},
                     "ollama": {"type": "ollama", "base_url": "http://127.0.0.1:9"}},
        "targets": {"small": {"backend": "llama", "model": "smollm2", "context_window": 8192,
                              "max_output_tokens": 1024, "fallback": ["coder"]},
                    "coder": {"backend": "ollama", "model": "qwen2.5-coder:14b", "num_ctx": 16384,
                              "max_output_tokens": 2048}},
        "default_target": "small", "gpu": {"enabled": False}}, env={})

    class Dry:
        config, gpu = cfg, None
        rules = RuleEngine(cfg, lambda rule: 0)

    body_bytes = CC_FIXTURE.read_bytes()
    request = json.loads(body_bytes)
    wall, cpu = [], []
    for _ in range(n):
        started, started_cpu = time.perf_counter(), time.thread_time()
        plan = pipeline.plan_request(Dry(), request, client="bench", protocol="anthropic", body_size=len(body_bytes))
        cpu.append((time.thread_time() - started_cpu) * 1000)
        wall.append((time.perf_counter() - started) * 1000)
        assert not plan.chain, "the benchmark request must fit no target"
    wall.sort()
    cpu.sort()
    return statistics.median(wall), wall[int(n * 0.99) - 1], statistics.median(cpu), cpu[int(n * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true", help="also print fitted byte-class weights")
    parser.add_argument("--llama", action="store_true",
                        help="also start the real llama.cpp server (SmolLM2, --n_ctx 16384) and compare with "
                             "its usage.prompt_tokens")
    parser.add_argument("--llama-bodies", type=int, default=8, help="how many bodies to send it (the slowest part)")
    parser.add_argument("--llama-max-tokens", type=int, default=3000,
                        help="send it only bodies estimated below this (prompt evaluation on a CPU is slow)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args()

    print("building bodies ...", flush=True)
    bodies = all_bodies()
    texts = [rendered(body) for _, body in bodies]
    print(f"{len(bodies)} bodies, {sum(len(t) for t in texts) / 1e6:.1f} MB rendered; "
          f"from {min(len(t) for t in texts)} to {max(len(t) for t in texts)} characters\n")

    rows: list[dict[str, Any]] = []
    worst: list[tuple[float, str, str]] = []
    for label, model, factory in FAMILIES:
        counter = factory()
        if counter is None:
            print(f"{label}: tokenizer not installed, skipped (pip install -e '.[bench-tokenizers]')")
            continue
        started = time.perf_counter()
        counts = counter(texts)
        print(f"{label}: counted in {time.perf_counter() - started:.1f} s", flush=True)
        for (name, body), real in zip(bodies, counts, strict=True):
            classes, parts = classes_of(body)
            estimate = context.estimate_input_tokens(body, model)
            rows.append({"family": label, "model": model, "body": name, "real": real, "estimate": estimate,
                         "ratio": estimate / real, "classes": classes, "parts": parts,
                         "half": half_of(name)})
            worst.append((estimate / real, label, name))
    if args.llama:
        from tests.support import local_model

        fitting = [(name, body) for name, body in bodies
                   if context.estimate_input_tokens(body, "smollm2") < args.llama_max_tokens]
        step = max(1, len(fitting) // args.llama_bodies)
        chosen = fitting[::step][: args.llama_bodies]
        print(f"starting the llama.cpp server; sending it {len(chosen)} bodies ...", flush=True)
        url, process = local_model.start_llama_server(n_ctx=args.llama_max_tokens + 1024)
        try:
            served = llama_server_counts(url, chosen)
        finally:
            local_model.stop_llama_server(process)
        for name, body in bodies:
            if name in served:
                estimate = context.estimate_input_tokens(body, "smollm2")
                rows.append({"family": "SmolLM2 via llama.cpp server usage.prompt_tokens", "model": "smollm2",
                             "body": name, "real": served[name], "estimate": estimate,
                             "ratio": estimate / served[name], "half": "test"})

    print("\nestimate / real count (>= 1.0 errs high; the target is never below 0.95)")
    for label in dict.fromkeys(r["family"] for r in rows):
        for half in ("test", "all"):
            ratios = [r["ratio"] for r in rows if r["family"] == label and (half == "all" or r["half"] == half)]
            under = sum(1 for x in ratios if x < 1.0)
            print(f"  {label:48} {half:5} n={len(ratios):3}  {distribution(ratios)}  below 1.0: {under}")
    all_ratios = [r["ratio"] for r in rows]
    print(f"\n  every family, every body: n={len(all_ratios)}  {distribution(all_ratios)}")
    print(f"  worst undercount: {min(all_ratios):.3f} ({(1 - min(all_ratios)) * 100:.1f}% below the real count)"
          if min(all_ratios) < 1 else f"  no body undercounted (lowest ratio {min(all_ratios):.3f})")
    print("  lowest five:", "; ".join(f"{r:.3f} {fam} / {name}" for r, fam, name in sorted(worst)[:5]))
    by_kind: dict[str, list[float]] = {}
    for r in rows:
        by_kind.setdefault(r["body"].split(":")[0], []).append(r["ratio"])
    for kind, ratios in by_kind.items():
        print(f"  {kind:12} n={len(ratios):3}  {distribution(ratios)}")

    if args.calibrate:
        print("\nupper-fit weights (calibration half):")
        calibrate(rows)

    wall_median, wall_p99, cpu_median, cpu_p99 = decision_time()
    print(f"\nover-long Claude Code request ({CC_FIXTURE.stat().st_size // 1024} KB, no target holds it) "
          f"decided without any backend call in: CPU median {cpu_median:.3f} ms, p99 {cpu_p99:.3f} ms; "
          f"wall median {wall_median:.3f} ms, p99 {wall_p99:.3f} ms (target < 1 ms)")
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k not in ("classes", "parts")}
                                         for r in rows], indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
