"""Find the Debian mirror this machine's apt uses, so debootstrap builds the test host from it.

Reads both forms apt understands:

* deb822 (``/etc/apt/sources.list.d/*.sources``, what a stock Debian 12 install writes)::

      Types: deb
      URIs: http://mirror.example/debian
      Suites: bookworm bookworm-updates

* one-line (``/etc/apt/sources.list``, ``/etc/apt/sources.list.d/*.list``)::

      deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm main

Security and source-only entries are skipped: debootstrap needs the main archive.

    python3 tests/support/apt_sources.py          # prints the mirror URI, exit 1 (with a reason) if none
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

APT_DIR = Path("/etc/apt")


def _is_main_archive(uri: str, suites: Iterable[str]) -> bool:
    """False for the security archive (its URI or its suites say so), which debootstrap cannot use."""
    if "security" in uri.rstrip("/").rsplit("/", 1)[-1]:
        return False
    suites = list(suites)
    return not suites or not all(s.endswith("-security") or "/updates" in s for s in suites)


def deb822_uris(text: str) -> Iterator[str]:
    """Binary (``deb``) archive URIs of a deb822 ``.sources`` file, in order, security ones skipped."""
    for stanza in _deb822_stanzas(text):
        types = stanza.get("types", "").split()
        if "deb" not in types or stanza.get("enabled", "yes").strip().lower() == "no":
            continue
        suites = stanza.get("suites", "").split()
        for uri in stanza.get("uris", "").split():
            if _is_main_archive(uri, suites):
                yield uri


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Stanzas (blank-line separated) as {lower-case field: value}; continuation lines are folded in."""
    stanza: dict[str, str] = {}
    field = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.lstrip().startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, field = {}, None
            continue
        if line[0] in " \t" and field:  # a continuation line belongs to the field above
            stanza[field] += " " + line.strip()
            continue
        # Split at the first colon only: the value is a URI with a colon of its own (http://...).
        name, sep, value = line.partition(":")
        if not sep:
            continue
        field = name.strip().lower()
        stanza[field] = value.strip()
    if stanza:
        yield stanza


def one_line_uris(text: str) -> Iterator[str]:
    """Binary archive URIs of a one-line ``sources.list``, in order, security ones skipped."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        words = line.split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if not words:
            continue
        uri, suites = words[0], words[1:2]
        if _is_main_archive(uri, suites):
            yield uri


def mirror(apt_dir: Path = APT_DIR) -> str | None:
    """The first main-archive URI apt uses: deb822 files first (Debian 12's default), then one-line."""
    sources_d = apt_dir / "sources.list.d"
    deb822 = sorted(sources_d.glob("*.sources")) if sources_d.is_dir() else []
    one_line = [apt_dir / "sources.list", *(sorted(sources_d.glob("*.list")) if sources_d.is_dir() else [])]
    for path in deb822:
        for uri in deb822_uris(_read(path)):
            return uri
    for path in one_line:
        for uri in one_line_uris(_read(path)):
            return uri
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    apt_dir = Path(argv[0]) if argv else APT_DIR
    uri = mirror(apt_dir)
    if uri is None:
        print(
            f"no Debian archive URI in {apt_dir}/sources.list.d/*.sources or {apt_dir}/sources.list;"
            " set AIBOX_TESTHOST_MIRROR to a Debian mirror URL",
            file=sys.stderr,
        )
        return 1
    print(uri)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
