"""GPU state from NVIDIA's NVML: routing features, Prometheus metrics, and energy per local call.

``GpuMonitor`` reads every GPU through the ``pynvml`` module (package ``nvidia-ml-py``): name,
utilisation, memory, temperature, power draw and the driver's cumulative energy counter. Where
there is no NVML library, no driver or no GPU (CI, CPU-only boxes), it reports
``gpu_available: 0`` and the configured ``gpu.defaults_when_absent``; it never raises.

Features (merged into rule namespaces, see features.py):

============================  ==============================================================
``gpu_available``             1 when at least one GPU could be read, else 0
``gpu_memory_used_fraction``  used / total memory, 0..1, the fullest GPU
``gpu_utilization``           percent of time a kernel ran (0..100, as nvidia-smi shows), busiest GPU
``gpu_temperature_c``         degrees Celsius, hottest GPU
``gpu_power_w``               watts drawn, all GPUs together
============================  ==============================================================

Readings are cached for ``cache_s`` (1 s) so calling ``features()`` on every request is cheap;
``energy_joules()`` always reads the counter afresh, because it brackets one call.

The NVML module is injectable (``GpuMonitor(config, nvml=...)``) so tests can pass a double.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .config import GpuConfig
from .metrics import register_collector

log = logging.getLogger("aibox_router.gpu")

# The GPU routing features: their one definition. Rules are checked against these names
# (rules.py) and every request carries all of them, read or not (routing_features).
FEATURE_NAMES = ("gpu_available", "gpu_memory_used_fraction", "gpu_utilization", "gpu_temperature_c",
                 "gpu_power_w")
JOULES_PER_KWH = Decimal(3_600_000)
_NVML_TEMPERATURE_GPU = 0  # pynvml.NVML_TEMPERATURE_GPU: the GPU die sensor
_RETRY_INIT_S = 60.0  # after a failed nvmlInit (driver not loaded yet at boot), try again this much later


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment; a field is None where this card or driver does not report it."""

    index: int
    name: str
    uuid: str | None = None
    utilization_pct: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    energy_j: float | None = None  # cumulative since the driver loaded

    @property
    def memory_used_fraction(self) -> float | None:
        if self.memory_used_bytes is None or not self.memory_total_bytes:
            return None
        return self.memory_used_bytes / self.memory_total_bytes


@dataclass(frozen=True)
class GpuSnapshot:
    ts: float  # time.time() of the reading
    gpus: tuple[GpuReading, ...] = ()
    driver_version: str | None = None
    reason: str = ""  # why no GPU could be read ("" when some could)

    @property
    def available(self) -> bool:
        return bool(self.gpus)


def energy_cost_usd(energy_j: float | None, usd_per_kwh: float) -> Decimal:
    """What *energy_j* joules cost at *usd_per_kwh* (1 kWh = 3.6e6 J); 0 when unknown."""
    if energy_j is None or energy_j <= 0 or usd_per_kwh <= 0:
        return Decimal(0)
    return Decimal(str(energy_j)) * Decimal(str(usd_per_kwh)) / JOULES_PER_KWH


def energy_between(before: float | None, after: float | None) -> float | None:
    """Joules between two ``energy_joules()`` readings; None when either is unknown or the counter reset."""
    if before is None or after is None or after < before:
        return None
    return after - before


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class GpuMonitor:
    """Reads NVML; thread-safe (the metrics endpoint and request handlers may call it at once)."""

    def __init__(self, config: GpuConfig, nvml: Any = None, *, cache_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._nvml = nvml
        self._cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._initialised = False
        self._init_failed_at: float | None = None
        self._init_error = ""
        self._cached: GpuSnapshot | None = None
        self._cached_at = 0.0

    # --- NVML lifecycle -------------------------------------------------------------------------
    def _ensure_init(self) -> str:
        """"" when NVML is usable, else why not. Called with the lock held."""
        if not self.config.enabled:
            return "GPU monitoring disabled in config (gpu.enabled: false)"
        if self._initialised:
            return ""
        now = self._clock()
        if self._init_failed_at is not None and now - self._init_failed_at < _RETRY_INIT_S:
            return self._init_error
        if self._nvml is None:
            try:
                import pynvml  # optional: installed only on GPU hosts
            except ImportError:
                self._init_failed_at, self._init_error = now, "pynvml not installed (pip install nvidia-ml-py)"
                return self._init_error
            self._nvml = pynvml
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as e:
            self._init_failed_at, self._init_error = now, f"NVML unavailable: {e}"
            log.info("%s; GPU features use gpu.defaults_when_absent", self._init_error)
            return self._init_error
        except OSError as e:  # a broken libnvidia-ml install
            self._init_failed_at, self._init_error = now, f"NVML unavailable: {e}"
            return self._init_error
        self._initialised = True
        self._init_failed_at = None
        return ""

    def close(self) -> None:
        with self._lock:
            if self._initialised:
                with contextlib.suppress(self._nvml.NVMLError):
                    self._nvml.nvmlShutdown()
                self._initialised = False
            self._cached = None

    # --- reading ------------------------------------------------------------------------------
    def _handles(self) -> list[Any]:
        nvml = self._nvml
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]

    def _optional(self, fn: Callable[[], Any]) -> Any:
        """A reading this card may not support (NOT_SUPPORTED, NO_PERMISSION ...): None instead."""
        try:
            return fn()
        except self._nvml.NVMLError:
            return None

    def _read_gpu(self, index: int, handle: Any) -> GpuReading:
        nvml = self._nvml
        name = self._optional(lambda: _text(nvml.nvmlDeviceGetName(handle))) or f"GPU {index}"
        uuid = self._optional(lambda: _text(nvml.nvmlDeviceGetUUID(handle)))
        util = self._optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        mem = self._optional(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        temp = self._optional(lambda: nvml.nvmlDeviceGetTemperature(handle, _NVML_TEMPERATURE_GPU))
        power_mw = self._optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        energy_mj = self._optional(lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        return GpuReading(
            index=index, name=name, uuid=uuid,
            utilization_pct=float(util.gpu) if util is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
            memory_total_bytes=int(mem.total) if mem is not None else None,
            temperature_c=float(temp) if temp is not None else None,
            power_w=power_mw / 1000.0 if power_mw is not None else None,
            energy_j=energy_mj / 1000.0 if energy_mj is not None else None,
        )

    def _read(self) -> GpuSnapshot:
        """A fresh reading. Called with the lock held."""
        reason = self._ensure_init()
        if reason:
            return GpuSnapshot(ts=time.time(), reason=reason)
        nvml = self._nvml
        try:
            handles = self._handles()
        except nvml.NVMLError as e:
            return GpuSnapshot(ts=time.time(), reason=f"NVML cannot list GPUs: {e}")
        if not handles:
            return GpuSnapshot(ts=time.time(), reason="NVML found no GPU")
        driver = self._optional(lambda: _text(nvml.nvmlSystemGetDriverVersion()))
        gpus = tuple(self._read_gpu(i, h) for i, h in enumerate(handles))
        return GpuSnapshot(ts=time.time(), gpus=gpus, driver_version=driver)

    def snapshot(self, max_age_s: float | None = None) -> GpuSnapshot:
        """The latest reading, at most *max_age_s* (default ``cache_s``) old."""
        max_age = self._cache_s if max_age_s is None else max_age_s
        with self._lock:
            now = self._clock()
            if self._cached is None or now - self._cached_at >= max_age:
                try:
                    self._cached = self._read()
                except Exception as e:  # noqa: BLE001 - a misbehaving driver must not fail a request
                    log.warning("reading NVML failed: %s: %s", type(e).__name__, e)
                    self._cached = GpuSnapshot(ts=time.time(), reason=f"reading NVML failed: {e}")
                self._cached_at = now
            return self._cached

    def features(self) -> dict[str, float]:
        """Routing features (see the module docstring); configured defaults for what cannot be read."""
        out = features_when_absent(self.config)
        snap = self.snapshot()
        out["gpu_available"] = 1.0 if snap.available else 0.0
        if not snap.available:
            return out

        def pick(values: list[float | None], combine: Callable[[list[float]], float], key: str) -> None:
            known = [v for v in values if v is not None]
            if known:
                out[key] = float(combine(known))

        pick([g.memory_used_fraction for g in snap.gpus], max, "gpu_memory_used_fraction")
        pick([g.utilization_pct for g in snap.gpus], max, "gpu_utilization")
        pick([g.temperature_c for g in snap.gpus], max, "gpu_temperature_c")
        pick([g.power_w for g in snap.gpus], sum, "gpu_power_w")
        return out

    def energy_joules(self) -> float | None:
        """Cumulative energy of all GPUs in joules, read now (uncached); None when any GPU cannot say."""
        snap = self.snapshot(max_age_s=0.0)
        if not snap.available or any(g.energy_j is None for g in snap.gpus):
            return None
        return sum(g.energy_j for g in snap.gpus if g.energy_j is not None)

    def describe(self) -> str:
        """Human-readable lines, one per GPU, or why there is none."""
        snap = self.snapshot()
        if not snap.available:
            return f"no GPU ({snap.reason})"
        lines = [describe_gpu(g) for g in snap.gpus]
        if snap.driver_version:
            lines.append(f"driver {snap.driver_version}")
        return "\n".join(lines)


def features_when_absent(config: GpuConfig) -> dict[str, float]:
    """Every GPU feature as it reads without a GPU: ``gpu_available`` 0, the rest from
    ``gpu.defaults_when_absent`` (else 0)."""
    defaults = config.defaults_when_absent
    out = {name: float(defaults.get(name, 0.0)) for name in FEATURE_NAMES}
    out["gpu_available"] = 0.0
    return out


def routing_features(monitor: GpuMonitor | None, config: GpuConfig) -> dict[str, float]:
    """The GPU features of one request: read through *monitor*, or, where the router reads no GPU
    (``gpu.enabled: false``), all of them as :func:`features_when_absent` gives them."""
    return monitor.features() if monitor is not None else features_when_absent(config)


def describe_gpu(g: GpuReading) -> str:
    gib = 1024**3
    parts = [f"GPU {g.index}: {g.name}"]
    if g.utilization_pct is not None:
        parts.append(f"{g.utilization_pct:.0f}% busy")
    if g.memory_used_bytes is not None and g.memory_total_bytes:
        parts.append(f"memory {g.memory_used_bytes / gib:.1f}/{g.memory_total_bytes / gib:.1f} GiB "
                     f"({g.memory_used_bytes / g.memory_total_bytes:.0%})")
    if g.temperature_c is not None:
        parts.append(f"{g.temperature_c:.0f} °C")
    if g.power_w is not None:
        parts.append(f"{g.power_w:.0f} W")
    return ", ".join(parts)


class GpuCollector:
    """Prometheus collector over a monitor; register once with ``metrics.register_collector``.

    *source* is a monitor, or a callable returning the current one (the runtime's, which a
    config reload may replace), or None when GPU monitoring is off.
    """

    def __init__(self, source: GpuMonitor | Callable[[], GpuMonitor | None] | None):
        self._source = source

    def set_source(self, source: GpuMonitor | Callable[[], GpuMonitor | None] | None) -> None:
        self._source = source

    def _monitor(self) -> GpuMonitor | None:
        if self._source is None or isinstance(self._source, GpuMonitor):
            return self._source
        return self._source()

    def describe(self) -> Iterator[Any]:
        return iter(self._families())

    def collect(self) -> Iterator[Any]:
        monitor = self._monitor()
        snap = monitor.snapshot() if monitor is not None else GpuSnapshot(ts=time.time(), reason="disabled")
        return iter(self._families(snap))

    @staticmethod
    def _families(snap: GpuSnapshot | None = None) -> list[Any]:
        labels = ["gpu", "name"]
        available = GaugeMetricFamily("gpu_available", "1 when NVML could read at least one GPU")
        fams: dict[str, Any] = {
            "util": GaugeMetricFamily("gpu_utilization_ratio", "Fraction of time a kernel ran (0-1)",
                                      labels=labels),
            "used": GaugeMetricFamily("gpu_memory_used_bytes", "GPU memory in use", labels=labels),
            "total": GaugeMetricFamily("gpu_memory_total_bytes", "GPU memory installed", labels=labels),
            "temp": GaugeMetricFamily("gpu_temperature_celsius", "GPU die temperature", labels=labels),
            "power": GaugeMetricFamily("gpu_power_watts", "Power drawn by the GPU", labels=labels),
            "energy": CounterMetricFamily("gpu_energy_joules", "Energy used since the driver loaded",
                                          labels=labels),
        }
        if snap is None:
            return [available, *fams.values()]
        available.add_metric([], 1.0 if snap.available else 0.0)
        for g in snap.gpus:
            lv = [str(g.index), g.name]
            values = {
                "util": g.utilization_pct / 100.0 if g.utilization_pct is not None else None,
                "used": g.memory_used_bytes, "total": g.memory_total_bytes,
                "temp": g.temperature_c, "power": g.power_w, "energy": g.energy_j,
            }
            for key, value in values.items():
                if value is not None:
                    fams[key].add_metric(lv, float(value))
        return [available, *fams.values()]


_REGISTERED: GpuCollector | None = None


def register_metrics(source: GpuMonitor | Callable[[], GpuMonitor | None] | None) -> bool:
    """Export GPU gauges on the router's ``/metrics`` (``metrics.register_collector``).

    Safe to call again (each server start, each test app): the collector is registered once per
    process and later calls only point it at the new *source*.
    """
    global _REGISTERED
    if _REGISTERED is None:
        _REGISTERED = GpuCollector(source)
        register_collector(_REGISTERED)
    else:
        _REGISTERED.set_source(source)
    return True
