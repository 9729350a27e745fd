#!/usr/bin/env python3
"""Build a stand-in Ollama *release directory* for the provisioning test.

    python3 tests/doubles/ollama_standin/build.py OUT_DIR [--version 0.0.0-standin] [--arch amd64]

OUT_DIR gets ``ollama-linux-<arch>.tgz`` (``bin/ollama`` = the TEST STAND-IN script in this
directory, ``lib/ollama/`` with a placeholder) and ``sha256sum.txt`` in the format of Ollama's
releases (``<sha256>  ./<file>``). The archive is byte-for-byte reproducible for a given version.
Only for tests: the real Ollama cannot be downloaded on the test machine.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MTIME = 315532800  # fixed timestamps: same input, same archive


def _add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = mode
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def build(out_dir: Path, version: str = "0.0.0-standin", arch: str = "amd64") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    script = (HERE / "ollama_standin.py").read_text(encoding="utf-8").replace("@VERSION@", version)
    archive = out_dir / f"ollama-linux-{arch}.tgz"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, "./", None, 0o755)
        _add(tar, "./bin", None, 0o755)
        _add(tar, "./bin/ollama", script.encode(), 0o755)
        _add(tar, "./lib", None, 0o755)
        _add(tar, "./lib/ollama", None, 0o755)
        _add(tar, "./lib/ollama/STANDIN-PLACEHOLDER",
             b"Placeholder for Ollama's bundled GPU runtime libraries (test stand-in).\n", 0o644)
    with open(archive, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=MTIME, filename="") as gz:
        gz.write(raw.getvalue())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (out_dir / "sha256sum.txt").write_text(f"{digest}  ./{archive.name}\n", encoding="utf-8")
    return archive


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--version", default="0.0.0-standin")
    ap.add_argument("--arch", default="amd64")
    args = ap.parse_args()
    archive = build(args.out_dir, args.version, args.arch)
    print(archive)


if __name__ == "__main__":
    main()
