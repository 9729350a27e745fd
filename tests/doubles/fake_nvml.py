"""Test double for NVIDIA's NVML library as the ``pynvml`` module (package nvidia-ml-py) exposes it.

It stands in for NVML because CI has no GPU and no ``libnvidia-ml.so``. ``FakeNvml`` is an
object with the same function names, signatures, constants and exception classes as ``pynvml``
(``NVMLError(value)`` maps to the per-code subclass such as ``NVMLError_LibraryNotFound``, with
the real codes: NVML_ERROR_LIBRARY_NOT_FOUND = 12, NVML_ERROR_NOT_SUPPORTED = 3, ...), so
``GpuMonitor(config, nvml=FakeNvml.h100())`` exercises the same code as the real module does.
tests/unit/test_gpu.py checks that every name the double provides exists in the real ``pynvml``
with the same parameters and error codes.

The values follow what an NVIDIA H100 80GB HBM3 (SXM) reports through NVML with a 550-series
driver (as ``nvidia-smi -q`` shows on such a card): its device name, 81559 MiB of memory
(85 520 809 984 bytes), about 70 W and 31 °C idle, 400-600 W under inference, and the millijoule
energy counter advancing by power x time. The samples below are a sequence (idle, model loading,
generating, idle again); ``advance()`` replays the next one, as the card's state would change
between two reads.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

# Error codes: the values of NVML's nvmlReturn_t (nvml.h), as pynvml defines them.
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Like pynvml.NVMLError: ``NVMLError(code)`` builds the subclass for that code; ``.value`` is the code."""

    _valClassMapping: ClassVar[dict[int, type[NVMLError]]] = {}
    value: int

    def __new__(cls, value: int) -> Self:
        target = NVMLError._valClassMapping.get(value, cls) if cls is NVMLError else cls
        obj = Exception.__new__(target)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NVMLError) and self.value == other.value

    __hash__ = Exception.__hash__


def _error_classes() -> dict[str, type[NVMLError]]:
    """NVMLError_LibraryNotFound etc., named the way pynvml names them."""
    classes: dict[str, type[NVMLError]] = {}
    for const, code in list(globals().items()):
        if not const.startswith("NVML_ERROR_"):
            continue
        name = "NVMLError_" + string.capwords(const.replace("NVML_ERROR_", ""), "_").replace("_", "")

        def new(cls: type[NVMLError], *args: Any, _code: int = code) -> NVMLError:
            return NVMLError.__new__(cls, _code)

        cls = type(name, (NVMLError,), {"__new__": new})
        NVMLError._valClassMapping[code] = cls
        classes[name] = cls
    return classes


ERROR_CLASSES = _error_classes()
globals().update(ERROR_CLASSES)


@dataclass
class Utilization:  # c_nvmlUtilization_t
    gpu: int
    memory: int


@dataclass
class Memory:  # c_nvmlMemory_t
    total: int
    free: int
    used: int


@dataclass
class Sample:
    """One moment of one card."""

    util_gpu: int
    util_mem: int
    mem_used: int
    temperature_c: int
    power_mw: int
    energy_mj: int


@dataclass
class Device:
    name: str
    uuid: str
    mem_total: int
    samples: list[Sample]
    # function name -> NVML error code it raises on this card (e.g. energy on cards without the counter)
    unsupported: dict[str, int] = field(default_factory=dict)


H100_TOTAL = 85_520_809_984  # 81559 MiB
H100_SAMPLES = [
    # idle, model weights not loaded
    Sample(util_gpu=0, util_mem=0, mem_used=553_648_128, temperature_c=31, power_mw=69_862,
           energy_mj=3_412_873_114),
    # loading a 14B model (1 s later)
    Sample(util_gpu=12, util_mem=3, mem_used=18_731_761_664, temperature_c=34, power_mw=118_407,
           energy_mj=3_412_991_521),
    # generating: busy, memory nearly full with weights + KV cache
    Sample(util_gpu=97, util_mem=61, mem_used=79_951_544_320, temperature_c=58, power_mw=512_336,
           energy_mj=3_413_503_857),
    # back to idle, weights still resident
    Sample(util_gpu=0, util_mem=0, mem_used=79_951_544_320, temperature_c=47, power_mw=96_115,
           energy_mj=3_413_599_972),
]


def h100(uuid: str = "GPU-8a1f4c2e-6b3d-4e9a-b7c5-2d0f1e3a9c84", *, energy_supported: bool = True,
         samples: list[Sample] | None = None) -> Device:
    unsupported = {} if energy_supported else {"nvmlDeviceGetTotalEnergyConsumption": NVML_ERROR_NOT_SUPPORTED}
    return Device("NVIDIA H100 80GB HBM3", uuid, H100_TOTAL, list(samples or H100_SAMPLES), unsupported)


class FakeNvml:
    """Module-like stand-in for ``pynvml``; pass it as ``GpuMonitor(config, nvml=FakeNvml(...))``."""

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU

    def __init__(self, devices: list[Device] | None = None, *, init_error: int | None = None,
                 driver_version: str = "550.54.15"):
        self.devices = devices if devices is not None else [h100()]
        self.init_error = init_error
        self.driver_version = driver_version
        self.step = 0
        self.init_count = 0
        self.calls: list[str] = []
        for name, cls in ERROR_CLASSES.items():
            setattr(self, name, cls)
        for const, value in globals().items():
            if const.startswith("NVML_ERROR_") or const == "NVML_SUCCESS":
                setattr(self, const, value)

    @classmethod
    def h100(cls, count: int = 1, **device_kw: Any) -> FakeNvml:
        return cls([h100(uuid=f"GPU-8a1f4c2e-6b3d-4e9a-b7c5-2d0f1e3a9c8{i}", **device_kw) for i in range(count)])

    def advance(self) -> None:
        """Move every card to its next recorded sample (the last one repeats)."""
        self.step += 1

    # --- helpers ---------------------------------------------------------------------------------
    def _check(self, fn: str) -> None:
        self.calls.append(fn)
        if self.init_count <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def _device(self, handle: Any, fn: str) -> Device:
        self._check(fn)
        if not isinstance(handle, _Handle) or handle.owner is not self:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        device = self.devices[handle.index]
        if fn in device.unsupported:
            raise NVMLError(device.unsupported[fn])
        return device

    def _sample(self, device: Device) -> Sample:
        return device.samples[min(self.step, len(device.samples) - 1)]

    # --- the pynvml API ----------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.init_count += 1

    def nvmlShutdown(self) -> None:
        self._check("nvmlShutdown")
        self.init_count -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.devices):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(self, index)

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self._device(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return self._device(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Utilization:
        s = self._sample(self._device(handle, "nvmlDeviceGetUtilizationRates"))
        return Utilization(gpu=s.util_gpu, memory=s.util_mem)

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: Any = None) -> Memory:
        device = self._device(handle, "nvmlDeviceGetMemoryInfo")
        s = self._sample(device)
        return Memory(total=device.mem_total, free=device.mem_total - s.mem_used, used=s.mem_used)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        s = self._sample(self._device(handle, "nvmlDeviceGetTemperature"))
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return s.temperature_c

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return self._sample(self._device(handle, "nvmlDeviceGetPowerUsage")).power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        return self._sample(self._device(handle, "nvmlDeviceGetTotalEnergyConsumption")).energy_mj


# The public API names, for the check against the real pynvml.
API_FUNCTIONS = tuple(n for n in vars(FakeNvml) if n.startswith("nvml"))


@dataclass(frozen=True)
class _Handle:  # c_nvmlDevice_t: an opaque pointer
    owner: FakeNvml
    index: int
