"""The test host's debootstrap mirror comes from this machine's apt sources, in either of apt's forms.

A stock Debian 12 install writes deb822 (`URIs: http://...`); splitting that at every colon once
turned the mirror into `http` and every fresh machine failed to build the test host.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import apt_sources

STOCK_DEBIAN_12 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def test_stock_debian_12_deb822_gives_the_whole_uri():
    assert list(apt_sources.deb822_uris(STOCK_DEBIAN_12)) == ["http://deb.debian.org/debian"]


def test_deb822_security_first_is_skipped_and_several_uris_are_kept_in_order():
    text = """\
Types: deb deb-src
URIs: https://security.example.org/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: https://mirror-a.example.org/debian
 https://mirror-b.example.org/debian
Suites: bookworm
Components: main contrib
"""
    assert list(apt_sources.deb822_uris(text)) == [
        "https://mirror-a.example.org/debian",
        "https://mirror-b.example.org/debian",
    ]


def test_deb822_source_only_and_disabled_stanzas_are_skipped_and_field_names_are_case_blind():
    text = """\
Types: deb-src
URIs: http://src.example.org/debian
Suites: bookworm

Types: deb
Enabled: no
URIs: http://off.example.org/debian
Suites: bookworm

types: deb
uris:   http://on.example.org:8080/debian
suites: bookworm
"""
    assert list(apt_sources.deb822_uris(text)) == ["http://on.example.org:8080/debian"]


def test_one_line_form_with_comments_options_and_security():
    keyring = "signed-by=/usr/share/keyrings/debian-archive-keyring.gpg"
    text = f"""\
# deb http://commented.example.org/debian bookworm main
deb-src http://src.example.org/debian bookworm main
deb [arch=amd64 {keyring}] http://security.debian.org/debian-security bookworm-security main
deb [{keyring}] http://mirror.example.org/debian bookworm main  # trailing
deb http://second.example.org/debian bookworm-updates main
"""
    assert list(apt_sources.one_line_uris(text)) == [
        "http://mirror.example.org/debian",
        "http://second.example.org/debian",
    ]


@pytest.fixture
def apt_dir(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_mirror_prefers_deb822_then_falls_back_to_sources_list(apt_dir: Path):
    (apt_dir / "sources.list").write_text("deb http://oneline.example.org/debian bookworm main\n")
    assert apt_sources.mirror(apt_dir) == "http://oneline.example.org/debian"
    (apt_dir / "sources.list.d" / "debian.sources").write_text(STOCK_DEBIAN_12)
    assert apt_sources.mirror(apt_dir) == "http://deb.debian.org/debian"


def test_no_archive_is_none_and_the_cli_says_what_to_set(apt_dir: Path, capsys):
    (apt_dir / "sources.list").write_text("deb http://security.debian.org/debian-security bookworm-security main\n")
    assert apt_sources.mirror(apt_dir) is None
    assert apt_sources.main([str(apt_dir)]) == 1
    assert "AIBOX_TESTHOST_MIRROR" in capsys.readouterr().err


def test_cli_prints_the_mirror(apt_dir: Path, capsys):
    (apt_dir / "sources.list.d" / "debian.sources").write_text(STOCK_DEBIAN_12)
    assert apt_sources.main([str(apt_dir)]) == 0
    assert capsys.readouterr().out.strip() == "http://deb.debian.org/debian"
