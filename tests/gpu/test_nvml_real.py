"""GpuMonitor against the real NVML library on a machine with an NVIDIA GPU.

Skipped (with the reason) where NVML cannot be initialised or finds no GPU; not in the default
test paths. Run on a GPU host with:  .venv/bin/pytest -q -p no:cacheprovider tests/gpu
"""

from __future__ import annotations

import time

import pynvml
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from aibox_router.config import GpuConfig
from aibox_router.gpu import FEATURE_NAMES, GpuCollector, GpuMonitor, energy_between


def _gpu_count() -> tuple[int, str]:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return 0, f"NVML cannot be initialised: {e}"
    try:
        return pynvml.nvmlDeviceGetCount(), "NVML found no GPU"
    finally:
        pynvml.nvmlShutdown()


_COUNT, _WHY = _gpu_count()
pytestmark = pytest.mark.skipif(_COUNT == 0, reason=f"needs a real NVIDIA GPU: {_WHY}")


@pytest.fixture
def mon():
    m = GpuMonitor(GpuConfig())
    yield m
    m.close()


def test_snapshot_matches_what_nvml_says(mon: GpuMonitor):
    snap = mon.snapshot()
    assert snap.available, snap.reason
    assert len(snap.gpus) == _COUNT
    assert snap.driver_version
    for g in snap.gpus:
        assert g.name and g.name != f"GPU {g.index}"
        assert g.uuid and g.uuid.startswith(("GPU-", "MIG-"))
        assert g.memory_total_bytes and g.memory_total_bytes > 1024**3
        assert g.memory_used_bytes is not None and 0 <= g.memory_used_bytes <= g.memory_total_bytes
        assert g.utilization_pct is None or 0 <= g.utilization_pct <= 100
        assert g.temperature_c is None or 0 < g.temperature_c < 120
        assert g.power_w is None or 0 < g.power_w < 2000
    print("\n" + mon.describe())


def test_features_are_real_numbers(mon: GpuMonitor):
    f = mon.features()
    assert set(f) == set(FEATURE_NAMES)
    assert f["gpu_available"] == 1.0
    assert 0 < f["gpu_memory_used_fraction"] <= 1


def test_energy_counter_advances(mon: GpuMonitor):
    before = mon.energy_joules()
    if before is None:
        pytest.skip("this GPU does not report nvmlDeviceGetTotalEnergyConsumption (NOT_SUPPORTED)")
    time.sleep(1.5)  # even an idle card draws tens of watts
    after = mon.energy_joules()
    used = energy_between(before, after)
    assert used is not None and used > 0
    watts = mon.features()["gpu_power_w"]
    print(f"\n{used:.1f} J in 1.5 s; power now {watts:.0f} W")
    assert used < 1.5 * 2000 * _COUNT


def test_prometheus_collector(mon: GpuMonitor):
    registry = CollectorRegistry()
    registry.register(GpuCollector(mon))
    text = generate_latest(registry).decode()
    assert "gpu_available 1.0" in text
    assert 'gpu_memory_total_bytes{gpu="0"' in text
