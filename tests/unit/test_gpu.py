"""GpuMonitor over a recorded NVML double (CI has no GPU), the no-library and no-GPU paths, rule
expressions over GPU features, the Prometheus collector and the energy-cost arithmetic."""

from __future__ import annotations

import inspect
from decimal import Decimal

import pynvml
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aibox_router.config import GpuConfig
from aibox_router.config_load import parse_config
from aibox_router.features import Features
from aibox_router.gpu import (
    FEATURE_NAMES,
    GpuCollector,
    GpuMonitor,
    energy_between,
    energy_cost_usd,
    features_when_absent,
    routing_features,
)
from aibox_router.rules import RuleEngine
from tests.doubles import fake_nvml
from tests.doubles.fake_nvml import FakeNvml


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def monitor(nvml: FakeNvml, **config: object) -> tuple[GpuMonitor, Clock]:
    clock = Clock()
    return GpuMonitor(GpuConfig(**config), nvml=nvml, clock=clock), clock  # type: ignore[arg-type]


# -- the double is faithful to pynvml ------------------------------------------------------------------


def test_double_has_pynvml_names_signatures_and_error_codes():
    for name in fake_nvml.API_FUNCTIONS:
        real = getattr(pynvml, name)
        fake = getattr(FakeNvml(), name)
        assert list(inspect.signature(fake).parameters) == list(inspect.signature(real).parameters), name
    for const in dir(fake_nvml):
        if const.startswith("NVML_ERROR_") or const == "NVML_TEMPERATURE_GPU":
            assert getattr(fake_nvml, const) == getattr(pynvml, const), const
    for cls_name, cls in fake_nvml.ERROR_CLASSES.items():
        real_cls = getattr(pynvml, cls_name)
        assert str(cls(0)) == str(real_cls(0)) or cls_name == "NVMLError_Unknown"
        assert type(fake_nvml.NVMLError(cls(0).value)) is cls


# -- readings ---------------------------------------------------------------------------------------


def test_snapshot_reads_every_field_of_an_h100():
    mon, _ = monitor(FakeNvml.h100())
    snap = mon.snapshot()
    assert snap.available and snap.driver_version == "550.54.15" and snap.reason == ""
    (g,) = snap.gpus
    assert g.name == "NVIDIA H100 80GB HBM3"
    assert g.uuid and g.uuid.startswith("GPU-")
    assert g.memory_total_bytes == 85_520_809_984
    assert g.memory_used_bytes == 553_648_128
    assert g.utilization_pct == 0.0
    assert g.temperature_c == 31.0
    assert g.power_w == pytest.approx(69.862)
    assert g.energy_j == pytest.approx(3_412_873.114)


def test_features_follow_the_card_and_are_cached_for_a_second():
    nvml = FakeNvml.h100()
    mon, clock = monitor(nvml)
    idle = mon.features()
    assert idle["gpu_available"] == 1.0
    assert idle["gpu_memory_used_fraction"] == pytest.approx(553_648_128 / 85_520_809_984)
    assert set(idle) == set(FEATURE_NAMES)

    nvml.advance()
    nvml.advance()  # now generating
    reads = nvml.calls.count("nvmlDeviceGetCount")
    assert mon.features() == idle  # within the cache window: no NVML call
    assert nvml.calls.count("nvmlDeviceGetCount") == reads

    clock.now += 1.0
    busy = mon.features()
    assert busy["gpu_utilization"] == 97.0
    assert busy["gpu_memory_used_fraction"] == pytest.approx(0.9349, abs=1e-4)
    assert busy["gpu_temperature_c"] == 58.0
    assert busy["gpu_power_w"] == pytest.approx(512.336)


def test_several_gpus_take_the_fullest_memory_and_the_summed_power():
    busy = fake_nvml.H100_SAMPLES[2]
    idle = fake_nvml.H100_SAMPLES[0]
    nvml = FakeNvml([fake_nvml.h100("GPU-a", samples=[idle]), fake_nvml.h100("GPU-b", samples=[busy])])
    mon, _ = monitor(nvml)
    f = mon.features()
    assert f["gpu_memory_used_fraction"] == pytest.approx(busy.mem_used / fake_nvml.H100_TOTAL)
    assert f["gpu_utilization"] == 97.0
    assert f["gpu_power_w"] == pytest.approx((idle.power_mw + busy.power_mw) / 1000)
    assert mon.energy_joules() == pytest.approx((idle.energy_mj + busy.energy_mj) / 1000)
    assert mon.describe().count("NVIDIA H100 80GB HBM3") == 2


def test_energy_is_read_fresh_and_differences_give_joules_per_call():
    nvml = FakeNvml.h100()
    mon, _ = monitor(nvml)
    mon.features()  # fills the cache
    before = mon.energy_joules()
    nvml.advance()
    after = mon.energy_joules()  # same clock instant: still a fresh read
    assert energy_between(before, after) == pytest.approx(118.407)
    assert energy_between(after, before) is None  # counter went back (driver reload): unknown
    assert energy_between(None, after) is None


def test_energy_not_supported_leaves_other_readings_intact():
    nvml = FakeNvml.h100(energy_supported=False)
    mon, _ = monitor(nvml)
    assert mon.energy_joules() is None
    assert mon.features()["gpu_available"] == 1.0
    assert mon.snapshot().gpus[0].power_w == pytest.approx(69.862)


# -- no library, no GPU, disabled -------------------------------------------------------------------


def test_library_not_found_gives_defaults_and_retries_later():
    nvml = FakeNvml(init_error=fake_nvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    mon, clock = monitor(nvml, defaults_when_absent={"gpu_memory_used_fraction": 0.25, "gpu_utilization": 5.0})
    f = mon.features()
    assert f == {"gpu_available": 0.0, "gpu_memory_used_fraction": 0.25, "gpu_utilization": 5.0,
                 "gpu_temperature_c": 0.0, "gpu_power_w": 0.0}
    assert mon.energy_joules() is None
    assert mon.describe() == "no GPU (NVML unavailable: NVML Shared Library Not Found)"
    assert nvml.calls.count("nvmlInit") == 1
    clock.now += 30
    mon.snapshot(max_age_s=0)
    assert nvml.calls.count("nvmlInit") == 1  # not hammered on every request
    nvml.init_error = None  # the driver came up after the router
    clock.now += 31
    assert mon.features()["gpu_available"] == 1.0


def test_zero_devices():
    mon, _ = monitor(FakeNvml(devices=[]))
    assert mon.features()["gpu_available"] == 0.0
    assert mon.snapshot().reason == "NVML found no GPU"
    assert mon.energy_joules() is None
    assert mon.describe() == "no GPU (NVML found no GPU)"


def test_gpu_lost_while_listing_does_not_raise():
    nvml = FakeNvml.h100()

    def lost() -> int:
        raise fake_nvml.NVMLError(fake_nvml.NVML_ERROR_GPU_IS_LOST)

    nvml.nvmlDeviceGetCount = lost  # type: ignore[method-assign]
    mon, _ = monitor(nvml)
    assert mon.features()["gpu_available"] == 0.0
    assert "GPU is lost" in mon.snapshot().reason


def test_disabled_never_touches_nvml():
    nvml = FakeNvml.h100()
    mon, _ = monitor(nvml, enabled=False)
    assert mon.features()["gpu_available"] == 0.0
    assert "disabled" in mon.describe()
    assert nvml.calls == []


def test_close_shuts_nvml_down():
    nvml = FakeNvml.h100()
    mon, _ = monitor(nvml)
    mon.snapshot()
    mon.close()
    assert nvml.init_count == 0


def test_real_pynvml_never_raises_here():
    """The real module: on CI (no libnvidia-ml) this is the library-not-found path."""
    f = GpuMonitor(GpuConfig()).features()
    assert set(f) == set(FEATURE_NAMES)
    assert f["gpu_available"] in (0.0, 1.0)


# -- rules over GPU features ------------------------------------------------------------------------


def _engine() -> RuleEngine:
    cfg = parse_config({
        "backends": {"local": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "targets": {"big": {"backend": "local", "model": "qwen2.5:32b"},
                    "small": {"backend": "local", "model": "qwen2.5:3b"}},
        "rules": [{"name": "gpu-full", "when": "gpu_available and gpu_memory_used_fraction > 0.9",
                   "target": "small"},
                  {"name": "hot", "when": "gpu_temperature_c > 85 or gpu_power_w > 650", "target": "small"}],
        "default_target": "big",
    }, env={})
    return RuleEngine(cfg, lambda rule: 0)


def test_rule_on_gpu_memory_switches_target():
    engine = _engine()
    nvml = FakeNvml.h100()
    mon, clock = monitor(nvml)
    assert engine.decide(Features(gpu=mon.features())).target == "big"
    nvml.advance()
    nvml.advance()
    clock.now += 1
    decision = engine.decide(Features(gpu=mon.features()))
    assert (decision.target, decision.rule) == ("small", "gpu-full")


def test_rules_see_defaults_when_there_is_no_gpu():
    engine = _engine()
    mon, _ = monitor(FakeNvml(init_error=fake_nvml.NVML_ERROR_DRIVER_NOT_LOADED),
                     defaults_when_absent={"gpu_memory_used_fraction": 0.95})
    decision = engine.decide(Features(gpu=mon.features()))
    assert decision.target == "big"  # gpu_available is 0, so the rule does not fire
    assert all(t.note.startswith("condition false") for t in decision.trace)


# -- metrics and energy cost ------------------------------------------------------------------------


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_prometheus_collector_exports_every_gauge():
    nvml = FakeNvml.h100()
    mon, _ = monitor(nvml)
    registry = CollectorRegistry()
    registry.register(GpuCollector(lambda: mon))
    got = _samples(registry)
    labels = (("gpu", "0"), ("name", "NVIDIA H100 80GB HBM3"))
    assert got[("gpu_available", ())] == 1.0
    assert got[("gpu_memory_total_bytes", labels)] == 85_520_809_984
    assert got[("gpu_memory_used_bytes", labels)] == 553_648_128
    assert got[("gpu_utilization_ratio", labels)] == 0.0
    assert got[("gpu_temperature_celsius", labels)] == 31.0
    assert got[("gpu_power_watts", labels)] == pytest.approx(69.862)
    assert got[("gpu_energy_joules_total", labels)] == pytest.approx(3_412_873.114)
    nvml.advance()
    nvml.advance()
    mon.snapshot(max_age_s=0)
    assert _samples(registry)[("gpu_utilization_ratio", labels)] == pytest.approx(0.97)


def test_prometheus_collector_without_gpu():
    registry = CollectorRegistry()
    registry.register(GpuCollector(None))  # monitoring disabled
    assert "gpu_available 0.0" in generate_latest(registry).decode()
    registry2 = CollectorRegistry()
    mon, _ = monitor(FakeNvml(devices=[]))
    registry2.register(GpuCollector(mon))
    assert "gpu_available 0.0" in generate_latest(registry2).decode()
    assert "gpu_power_watts{" not in generate_latest(registry).decode()


def test_energy_cost_usd():
    assert energy_cost_usd(3_600_000, 0.30) == Decimal("0.30")
    assert energy_cost_usd(1800.0, 0.25) == Decimal("0.000125")
    assert energy_cost_usd(None, 0.30) == 0
    assert energy_cost_usd(500.0, 0.0) == 0


def test_register_metrics_on_the_router_registry_is_idempotent():
    from aibox_router import metrics
    from aibox_router.gpu import register_metrics

    first, _ = monitor(FakeNvml.h100())
    assert register_metrics(lambda: first)
    assert "gpu_power_watts{" in metrics.render()[0].decode()
    second, _ = monitor(FakeNvml(devices=[]))
    assert register_metrics(lambda: second)  # a second server start: no duplicate-timeseries error
    text = metrics.render()[0].decode()
    assert "gpu_available 0.0" in text and "gpu_power_watts{" not in text
    assert register_metrics(None)  # GPU monitoring off
    assert "gpu_available 0.0" in metrics.render()[0].decode()


# -- gpu.enabled: false ----------------------------------------------------------------------------


class _NoGpuRuntime:
    """What Runtime.open gives the pipeline when the config says gpu.enabled: false: no monitor."""

    def __init__(self, cfg) -> None:
        self.config = cfg
        self.rules = RuleEngine(cfg, lambda rule: 0)
        self.gpu = None


def test_a_rule_config_check_accepts_matches_when_the_gpu_is_not_read():
    """The bug: `config check` validated rules against all five GPU features while a router with
    gpu.enabled: false passed only the two of gpu.defaults_when_absent, so a rule on gpu_available
    passed the check and then never matched (an unknown name is an error, so the rule was skipped)."""
    from aibox_router import pipeline

    cfg = parse_config({
        "backends": {"local": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "targets": {"big": {"backend": "local", "model": "qwen2.5:32b"},
                    "small": {"backend": "local", "model": "qwen2.5:3b"}},
        "rules": [{"name": "no-gpu", "when": "not gpu_available and gpu_power_w == 0", "target": "small"}],
        "default_target": "big",
        "gpu": {"enabled": False, "defaults_when_absent": {"gpu_utilization": 42.0}},
    }, env={})
    request = {"model": "qwen2.5:32b", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    plan = pipeline.plan_request(_NoGpuRuntime(cfg), request, client="t", protocol="anthropic", body_size=100)
    assert (plan.decision.target, plan.decision.rule) == ("small", "no-gpu")
    assert set(plan.features.gpu) == set(FEATURE_NAMES)
    assert plan.features.gpu["gpu_available"] == 0.0 and plan.features.gpu["gpu_utilization"] == 42.0


def test_without_a_reading_every_feature_takes_its_default():
    configured = GpuConfig(defaults_when_absent={"gpu_available": 1.0, "gpu_power_w": 80.0})
    defaults = features_when_absent(configured)
    assert defaults == {"gpu_available": 0.0, "gpu_memory_used_fraction": 0.0, "gpu_utilization": 0.0,
                        "gpu_temperature_c": 0.0, "gpu_power_w": 80.0}
    assert routing_features(None, GpuConfig(enabled=False)) == features_when_absent(GpuConfig())
    mon, _ = monitor(FakeNvml(init_error=fake_nvml.NVML_ERROR_DRIVER_NOT_LOADED))
    assert routing_features(mon, mon.config) == features_when_absent(mon.config)
