"""The systemd unit templates of the router and ollama roles, rendered for a box with and without a GPU.

The test host has no GPU, so the converge there only ever renders the no-GPU variant; these tests
pin what a GPU box gets: the NVIDIA device nodes allowed, no PrivateDevices (it would hide them)
and no ProcSubset=pid (NVML and CUDA read /proc/driver/nvidia).
"""

from __future__ import annotations

from pathlib import Path

import jinja2
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"


def _render(role: str, template: str, **variables: object) -> dict[str, list[str]]:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True)
    env.filters["comment"] = lambda text: f"# {text}"
    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
    text = env.from_string((ROLES / role / "templates" / template).read_text()).render(
        ansible_managed="managed", **{**defaults, **variables})
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


ROUTER_VARS = {"_router_env_path": "/etc/aibox-router/env", "_router_state_dir": "/var/lib/aibox-router",
               "_router_config_path": "/etc/aibox-router/config.yml", "_router_bin": "/opt/x/bin/aibox-router",
               "_router_nvidia_device_groups": ["nvidia-frontend", "nvidia", "nvidia-caps"]}


def test_router_without_a_gpu_gets_no_devices_and_only_process_proc():
    unit = _render("router", "aibox-router.service.j2", _router_nvml_devices=False, **ROUTER_VARS)
    assert unit["PrivateDevices"] == ["yes"] and unit["ProcSubset"] == ["pid"]
    assert "DeviceAllow" not in unit


def test_router_with_a_gpu_opens_the_nvidia_nodes_only():
    unit = _render("router", "aibox-router.service.j2", _router_nvml_devices=True, **ROUTER_VARS)
    assert "PrivateDevices" not in unit and "ProcSubset" not in unit
    assert unit["DevicePolicy"] == ["closed"]
    assert unit["DeviceAllow"] == ["char-nvidia-frontend rw", "char-nvidia rw", "char-nvidia-caps rw"]


def test_router_limits_and_filters_come_from_the_inventory():
    unit = _render("router", "aibox-router.service.j2", _router_nvml_devices=False, **ROUTER_VARS,
                   router_memory_max="3G", router_tasks_max=99, router_limit_nofile=4096)
    assert unit["MemoryMax"] == ["3G"] and unit["TasksMax"] == ["99"] and unit["LimitNOFILE"] == ["4096"]
    assert unit["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert unit["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert unit["MemoryDenyWriteExecute"] == ["yes"] and unit["ProtectProc"] == ["invisible"]
    assert unit["RemoveIPC"] == ["yes"]


OLLAMA_VARS = {"_ollama_gpu_present": False, "_ollama_gpu_units": [],
               "_ollama_nvidia_device_groups": ["nvidia-frontend", "nvidia", "nvidia-uvm", "nvidia-caps"]}


def test_ollama_hardening_keeps_the_gpu_reachable():
    unit = _render("ollama", "ollama.service.j2", **OLLAMA_VARS)
    assert unit["DevicePolicy"] == ["closed"]
    assert "char-nvidia-uvm rw" in unit["DeviceAllow"] and "char-nvidia rw" in unit["DeviceAllow"]
    assert "PrivateDevices" not in unit and "ProcSubset" not in unit and "MemoryDenyWriteExecute" not in unit
    assert unit["ReadWritePaths"] == ["/var/lib/ollama /var/lib/ollama/models"]
    assert unit["ProtectSystem"] == ["strict"] and unit["CapabilityBoundingSet"] == [""]


def test_ollama_hardening_can_be_switched_off():
    unit = _render("ollama", "ollama.service.j2", **OLLAMA_VARS, ollama_systemd_hardening=False)
    assert "ProtectSystem" not in unit and "DevicePolicy" not in unit and "SystemCallFilter" not in unit
