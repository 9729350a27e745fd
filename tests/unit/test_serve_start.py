"""`aibox-router serve` at start: a port in use fails before anything claims to be ready, and a
backend whose api_key_env is unset is named in a warning."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from aibox_router.cli.common import default_config_path


def _config(tmp_path: Path, port: int) -> Path:
    data = yaml.safe_load(Path(default_config_path()).read_text())
    data["server"].update(port=port, state_dir=str(tmp_path / "state"))
    path = tmp_path / "router.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_port_in_use_fails_at_once_without_logging_ready(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
        run = subprocess.run([sys.executable, "-m", "aibox_router", "serve", "-c", str(_config(tmp_path, port))],
                             capture_output=True, text=True, timeout=60, env=env, check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in output
    assert "ready" not in output.replace("already", "")  # nothing claimed to be ready first
    # The unset key is said at start, naming the backend and the variable.
    assert "backends.cloud.api_key_env: environment variable ANTHROPIC_API_KEY is not set" in output
