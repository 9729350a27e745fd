"""A config's `prices` is laid over the embedded price table by prefix (issue 9): omitted, the embedded
table prices the current Claude models; given, single entries are added or replaced."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from aibox_router.cli import main
from aibox_router.config_load import embedded_prices, parse_config
from aibox_router.pricing import find_price

MINIMAL = {
    "backends": {"cloud": {"type": "anthropic", "base_url": "http://127.0.0.1:9"}},
    "targets": {"claude": {"backend": "cloud", "model": "claude-opus-4-8"}},
    "default_target": "claude",
}


def test_an_omitted_prices_key_means_the_embedded_table() -> None:
    cfg = parse_config(MINIMAL, "router.yml", env={})
    assert cfg.prices == list(embedded_prices())
    found = find_price(cfg.prices, "claude-opus-4-8")
    assert found is not None and (found.input, found.output) == (5.0, 25.0)


def test_an_entry_with_an_embedded_prefix_replaces_it_and_others_stay() -> None:
    cfg = parse_config({**MINIMAL, "prices": [{"prefix": "claude-opus-4-8", "input": 4.0, "output": 20.0}]},
                       "router.yml", env={})
    found = find_price(cfg.prices, "claude-opus-4-8-20261101")
    assert found is not None and (found.input, found.output, found.inference_geo_multipliers) == (4.0, 20.0, {})
    sonnet = find_price(cfg.prices, "claude-sonnet-4-6")
    assert sonnet is not None and sonnet.input == 3.0
    assert len(cfg.prices) == len(embedded_prices())


def test_a_new_prefix_is_added_and_a_shorter_one_does_not_shadow_embedded_entries() -> None:
    cfg = parse_config({**MINIMAL, "targets": {"claude": {"backend": "cloud", "model": "my-proxy-model"}},
                        "prices": [{"prefix": "my-proxy-", "input": 1.0, "output": 2.0},
                                   {"prefix": "claude-sonnet-4", "input": 9.0, "output": 9.0}]},
                       "router.yml", env={})
    assert len(cfg.prices) == len(embedded_prices()) + 2
    assert find_price(cfg.prices, "my-proxy-model").input == 1.0
    assert find_price(cfg.prices, "claude-sonnet-4-6").input == 3.0  # the longer embedded prefix wins
    assert find_price(cfg.prices, "claude-sonnet-4-7").input == 9.0  # only what nothing longer matches


def test_config_check_accepts_a_config_without_prices_and_rejects_bad_entries(tmp_path: Path) -> None:
    good = tmp_path / "router.yml"
    good.write_text(yaml.safe_dump(MINIMAL))
    ok = CliRunner().invoke(main, ["config", "check", str(good)])
    assert ok.exit_code == 0, ok.output
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({**MINIMAL, "prices": [{"prefix": "claude-opus-4-8", "input": -1, "output": 2}]}))
    result = CliRunner().invoke(main, ["config", "check", str(bad)])
    assert result.exit_code == 1
    assert "prices" in result.output and "claude-opus-4-8" in result.output and ">= 0" in result.output
    typo = tmp_path / "typo.yml"
    typo.write_text(yaml.safe_dump({**MINIMAL, "prices": [{"prefix": "x", "input": 1, "output": 2, "fast": 6}]}))
    result = CliRunner().invoke(main, ["config", "check", str(typo)])
    assert result.exit_code == 1 and "fast" in result.output
