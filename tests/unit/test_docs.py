"""The docs match the code: every command shown in README.md and docs/ exists (``--help`` answers) and
takes the options shown, and every config snippet passes ``config check``.

Commands are found in fenced code blocks and in inline code spans that start with ``aibox-router``
(with or without a path) or ``./aibox``. Router config snippets are merged over the embedded default
config (a snippet usually shows one section) and validated; inventory snippets must name variables
that a role or the inventory defines.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from aibox_router.cli import main
from aibox_router.cli.common import default_config_path
from aibox_router.config import RouterConfig
from aibox_router.config_load import interpolate_env, parse_config

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)  # also fences indented in a list
INLINE = re.compile(r"`(aibox-router [^`]+)`")
# `aibox-router` (after a space, a quote or a path) followed by a subcommand name.
ROUTER_CALL = re.compile(r"(?:^|[\s'\"/$])aibox-router((?:\s+(?=[a-z])[^\s'\"|;&)]+)(?:\s+[^\s'\"|;&)]+)*)")


def _blocks() -> list[tuple[str, str, str]]:
    """(doc name, language, text) of every fenced block."""
    return [(doc.name, m.group(1), textwrap.dedent(m.group(2)))
            for doc in DOCS for m in FENCE.finditer(doc.read_text())]


def _router_commands() -> list[tuple[str, str]]:
    """(doc name, the words after `aibox-router`) for every command shown."""
    found: list[tuple[str, str]] = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            for line in m.group(2).replace("\\\n", " ").splitlines():
                for call in ROUTER_CALL.finditer(line):
                    if call.group(1).strip():
                        found.append((doc.name, call.group(1)))
        prose = FENCE.sub("", text)
        found += [(doc.name, span[len("aibox-router"):]) for span in INLINE.findall(prose)]
    return found


def _resolve(words: list[str]) -> tuple[list[str], click.Command]:
    """Walk subcommand names from the top; stop at the first word that is not one."""
    ctx = click.Context(main)
    cmd: click.Command = main
    path: list[str] = []
    for word in words:
        if not isinstance(cmd, click.Group):
            break
        sub = cmd.get_command(ctx, word)
        if sub is None:
            break
        cmd, path = sub, [*path, word]
    return path, cmd


def _options_of(cmd: click.Command) -> set[str]:
    return {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


COMMANDS = _router_commands()


def test_the_docs_show_router_commands() -> None:
    assert len(COMMANDS) >= 20
    assert {name for name, _ in COMMANDS} >= {"README.md", "cost-control.md", "gpu-bench-mcp.md", "operations.md"}


@pytest.mark.parametrize(("doc", "shown"), COMMANDS, ids=[f"{d}:{c.strip()[:40]}" for d, c in COMMANDS])
def test_every_router_command_shown_exists_and_takes_the_options_shown(doc: str, shown: str) -> None:
    words = shown.replace("\\|", " ").split()
    path, cmd = _resolve(words)
    assert path, f"{doc}: `aibox-router{shown}` names no subcommand"
    assert not isinstance(cmd, click.Group) or words[len(path):] == [] or words[len(path)].startswith("-"), (
        f"{doc}: `aibox-router{shown}`: {words[len(path)]!r} is not a subcommand of {' '.join(path)}")
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, f"{doc}: aibox-router {' '.join(path)} --help: {result.output}"
    known = _options_of(cmd)
    shown_options = {re.sub(r"[\]\[|,.)]+$", "", w).split("=")[0].lstrip("[")
                     for w in words[len(path):] if w.lstrip("[").startswith("-")}
    unknown = {o for o in shown_options if o and o not in known and o != "-"}
    assert not unknown, f"{doc}: `aibox-router{shown}` shows options {sorted(unknown)} that the command lacks"


def test_the_aibox_script_lists_every_subcommand_the_docs_use() -> None:
    run = subprocess.run([str(REPO / "aibox"), "--help"], capture_output=True, text=True, check=False, timeout=30)
    assert run.returncode == 0, run.stderr
    used = {m.group(1) for doc in DOCS for m in re.finditer(r"\./aibox (\w+)", doc.read_text())}
    assert used >= {"up", "down", "test", "setup"}
    for sub in used:
        assert f"./aibox {sub}" in run.stdout, f"./aibox --help does not list {sub}"


# -- config snippets ---------------------------------------------------------------------------------

ROUTER_KEYS = set(RouterConfig.__struct_fields__)
INVENTORY_PREFIXES = ("router_", "budgets_", "models_", "ollama_", "nvidia_", "cost_cron_", "vault_", "team_")


def _yaml_snippets() -> list[tuple[str, object]]:
    out = []
    for doc, lang, text in _blocks():
        if lang not in ("yaml", "yml"):
            continue
        try:
            out.append((doc, yaml.safe_load(text)))
        except yaml.YAMLError:
            out.append((doc, text))  # an indented fragment of a list: checked below
    return out


SNIPPETS = _yaml_snippets()
ROUTER_SNIPPETS = [(d, s) for d, s in SNIPPETS if isinstance(s, dict) and set(s) & ROUTER_KEYS]
INVENTORY_SNIPPETS = [(d, s) for d, s in SNIPPETS
                      if isinstance(s, dict) and any(str(k).startswith(INVENTORY_PREFIXES) for k in s)]


def test_the_docs_show_config_snippets() -> None:
    assert len(ROUTER_SNIPPETS) >= 2 and len(INVENTORY_SNIPPETS) >= 2


@pytest.mark.parametrize(("doc", "snippet"), ROUTER_SNIPPETS, ids=[d for d, _ in ROUTER_SNIPPETS])
def test_every_router_config_snippet_passes_config_check(doc: str, snippet: dict) -> None:
    config = interpolate_env(yaml.safe_load(Path(default_config_path()).read_text()), {})  # its ${X:-default}s
    for key, value in snippet.items():  # a snippet's mapping adds to the default's (e.g. one more target)
        both_maps = isinstance(value, dict) and isinstance(config.get(key), dict)
        config[key] = {**config[key], **value} if both_maps else value
    parse_config(config, f"{doc} snippet", env=_AnyVariable())  # raises ConfigError naming the key


class _AnyVariable(dict):
    """An environment in which every ${NAME} a snippet references is set."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return f"example-{key.lower()}"


def _defined_variables() -> set[str]:
    names: set[str] = set()
    for f in [*(REPO / "roles").glob("*/defaults/main.yml"), *(REPO / "inventory" / "group_vars").rglob("*.yml")]:
        names |= set(yaml.safe_load(f.read_text()) or {})
    return names


@pytest.mark.parametrize(("doc", "snippet"), INVENTORY_SNIPPETS, ids=[d for d, _ in INVENTORY_SNIPPETS])
def test_every_inventory_snippet_names_defined_variables(doc: str, snippet: dict) -> None:
    defined = _defined_variables()
    unknown = [k for k in snippet if not str(k).startswith("vault_") and k not in defined]
    assert not unknown, f"{doc}: inventory snippet sets {unknown}, which no role or inventory file defines"
