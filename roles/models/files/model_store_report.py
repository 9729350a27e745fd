#!/usr/bin/python3
"""Report what Ollama's model store holds and how much room its filesystem has.

    model_store_report.py STORE_DIR MODEL [MODEL ...]

Run on the box by the models role's preflight (ansible.builtin.script), before Ollama may even
be installed: it reads the store's manifests directly instead of asking the API, so it works in
--check mode and on a fresh box. Prints one JSON object:

    {"store": ..., "checked_path": ..., "mount_point": ..., "free_bytes": n,
     "present": [names], "missing": [names]}

A model ``name[:tag]`` is present when Ollama's manifest for it exists:
``<store>/manifests/<registry>/<namespace>/<model>/<tag>`` (registry ``registry.ollama.ai``
and namespace ``library`` unless the name says otherwise; tag ``latest`` when none is given).
When the store does not exist yet, the free space is that of its nearest existing parent,
which is the filesystem the store will be created on. Python 3 standard library only.
"""

from __future__ import annotations

import json
import os
import sys

DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"


def manifest_path(store: str, name: str) -> str:
    """Where Ollama keeps the manifest of ``name`` (its on-disk layout, see the module docstring)."""
    repo, _, tag = name.rpartition(":")
    if not repo or "/" in tag:  # no tag ("qwen2.5") or a port, not a tag ("host:5000/x")
        repo, tag = name, "latest"
    parts = repo.split("/")
    if len(parts) == 1:
        parts = [DEFAULT_REGISTRY, DEFAULT_NAMESPACE, *parts]
    elif len(parts) == 2:
        parts = [DEFAULT_REGISTRY, *parts]
    return os.path.join(store, "manifests", *parts, tag)


def nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def mount_point(path: str) -> str:
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def report(store: str, models: list[str]) -> dict:
    checked = nearest_existing(store)
    fs = os.statvfs(checked)
    present = [m for m in models if os.path.isfile(manifest_path(store, m))]
    return {
        "store": store,
        "checked_path": checked,
        "mount_point": mount_point(checked),
        "free_bytes": fs.f_bavail * fs.f_frsize,
        "present": present,
        "missing": [m for m in models if m not in present],
    }


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(report(argv[0], argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
