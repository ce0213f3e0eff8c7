"""GPU telemetry through NVML (nvidia-ml-py): identity, memory, clocks, power, temperature, throttle reasons, energy.

Nothing here raises for a missing GPU or NVML: the fields are None and ``reason`` says why, so a CPU-only run
records the same keys as a GPU run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

# bit -> name, from nvml.h's nvmlClocksEventReason* (formerly ...ThrottleReason*)
_THROTTLE_BITS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def throttle_names(mask: int) -> list[str]:
    """Names of the reasons set in an NVML clocks-event bit mask (unknown bits as hex)."""
    names = [name for bit, name in _THROTTLE_BITS.items() if mask & bit]
    rest = mask & ~sum(_THROTTLE_BITS)
    if rest:
        names.append(hex(rest))
    return names


@dataclass
class GpuTelemetry:
    """One snapshot of a GPU's state. All None (and ``reason`` set) where there is no GPU or no NVML."""

    index: int | None = None
    name: str | None = None
    uuid: str | None = None
    driver: str | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    sm_clock_max_mhz: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    temperature_c: int | None = None
    utilization_pct: int | None = None
    throttle_reasons: list[str] | None = None
    unsupported: list[str] = field(default_factory=list)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EnergyResult:
    """Energy over a measured span. ``method``: "energy_counter" (nvmlDeviceGetTotalEnergyConsumption delta) or
    "power_sampling" (nvmlDeviceGetPowerUsage sampled in a thread, trapezoid-integrated); None with ``reason`` where
    it cannot be measured."""

    energy_j: float | None = None
    mean_power_w: float | None = None
    duration_s: float | None = None
    energy_per_item_j: float | None = None
    method: str | None = None
    power_samples: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _nvml() -> Any:
    import pynvml  # nvidia-ml-py

    pynvml.nvmlInit()
    return pynvml


def _handle(nv: Any, device: torch.device) -> tuple[Any, int]:
    """The NVML handle of a torch CUDA device, matched by UUID (NVML ignores CUDA_VISIBLE_DEVICES' renumbering)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    with contextlib.suppress(Exception):
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        return nv.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"), index
    return nv.nvmlDeviceGetHandleByIndex(index), index


def _no_gpu_reason(device: str | torch.device | int | None) -> tuple[torch.device | None, str | None]:
    try:
        dev = torch.device(f"cuda:{device}" if isinstance(device, int) else (device or "cuda"))
    except (RuntimeError, TypeError):
        return None, f"device={device!r} is not a device name"
    if dev.type != "cuda":
        return None, f"device is {dev.type}: GPU telemetry only applies to CUDA devices"
    if not torch.cuda.is_available():
        return None, "no CUDA device visible to torch (torch.cuda.is_available() is False)"
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        return None, f"{dev} is not present ({torch.cuda.device_count()} CUDA device(s) visible)"
    return dev, None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def telemetry(device: str | torch.device | int | None = "cuda") -> GpuTelemetry:
    """Snapshot of the GPU behind ``device``: name, UUID, driver, memory, SM/memory clocks, power, temperature,
    utilization and the active clock throttle reasons. Never raises: missing pieces are None with a reason, and
    queries a GPU does not support are listed in ``unsupported``."""
    dev, reason = _no_gpu_reason(device)
    if dev is None:
        return GpuTelemetry(reason=reason)
    try:
        nv = _nvml()
    except Exception as e:  # ImportError, NVMLError_LibraryNotFound, driver not loaded...
        return GpuTelemetry(reason=f"NVML unavailable: {type(e).__name__}: {e}")
    out = GpuTelemetry()
    try:
        h, out.index = _handle(nv, dev)

        def q(attr: str, fn: Callable[[], Any]) -> None:
            try:
                setattr(out, attr, fn())
            except nv.NVMLError:
                out.unsupported.append(attr)

        mem = None
        with contextlib.suppress(nv.NVMLError):
            mem = nv.nvmlDeviceGetMemoryInfo(h)
        q("name", lambda: _text(nv.nvmlDeviceGetName(h)))
        q("uuid", lambda: _text(nv.nvmlDeviceGetUUID(h)))
        q("driver", lambda: _text(nv.nvmlSystemGetDriverVersion()))
        if mem is not None:
            out.memory_total_bytes, out.memory_used_bytes = int(mem.total), int(mem.used)
        else:
            out.unsupported += ["memory_total_bytes", "memory_used_bytes"]
        q("sm_clock_mhz", lambda: int(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)))
        q("mem_clock_mhz", lambda: int(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)))
        q("sm_clock_max_mhz", lambda: int(nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM)))
        q("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1e3)
        q("power_limit_w", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3)
        q("temperature_c", lambda: int(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)))
        q("utilization_pct", lambda: int(nv.nvmlDeviceGetUtilizationRates(h).gpu))
        reasons = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            nv.nvmlDeviceGetCurrentClocksThrottleReasons
        q("throttle_reasons", lambda: throttle_names(int(reasons(h))))
    except Exception as e:
        return GpuTelemetry(reason=f"NVML query failed for {dev}: {type(e).__name__}: {e}")
    finally:
        with contextlib.suppress(Exception):
            nv.nvmlShutdown()
    return out


class PowerSampler:
    """Samples a power reading (watts) in a background thread and integrates it over time (trapezoid rule)."""

    def __init__(self, read_power_w: Callable[[], float], interval_s: float = 0.01) -> None:
        self.read_power_w = read_power_w
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []  # (perf_counter, watts)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        self.samples.append((time.perf_counter(), float(self.read_power_w())))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> None:
        self._sample()
        self._thread = threading.Thread(target=self._run, name="pybench-power-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> tuple[float, float]:
        """Stop sampling; returns (joules, seconds) between the first and last sample."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        energy = 0.0
        for (t0, p0), (t1, p1) in zip(self.samples, self.samples[1:], strict=False):
            energy += 0.5 * (p0 + p1) * (t1 - t0)
        return energy, self.samples[-1][0] - self.samples[0][0]


class EnergyMeter:
    """GPU energy over a span: ``start()`` ... ``stop(items)``, or ``with EnergyMeter("cuda") as m: ...`` then
    ``m.result``. Uses the board's total-energy counter where the GPU has one (Volta and later), else power sampled
    every ``interval_s`` and integrated. Never raises for a missing GPU/NVML: the result carries the reason."""

    def __init__(self, device: str | torch.device | int | None = "cuda", interval_s: float = 0.01) -> None:
        self.device = device
        self.interval_s = interval_s
        self.result: EnergyResult | None = None
        self._reason: str | None = None
        self._nv: Any = None
        self._handle: Any = None
        self._t0 = 0.0
        self._e0: int | None = None
        self._sampler: PowerSampler | None = None
        self._started = False

    def start(self) -> None:
        """Begin the span (reads the energy counter, or starts the power sampler)."""
        self._started = True
        dev, self._reason = _no_gpu_reason(self.device)
        if dev is None:
            return
        try:
            self._nv = _nvml()
            self._handle, _ = _handle(self._nv, dev)
        except Exception as e:
            self._reason = f"NVML unavailable: {type(e).__name__}: {e}"
            return
        nv, h = self._nv, self._handle
        try:
            self._e0 = int(nv.nvmlDeviceGetTotalEnergyConsumption(h))  # millijoules since the driver loaded
        except nv.NVMLError:
            self._e0 = None
            try:
                nv.nvmlDeviceGetPowerUsage(h)
            except nv.NVMLError as e:
                self._reason = f"{dev}: neither the energy counter nor power readings are supported ({e})"
                return
            self._sampler = PowerSampler(lambda: nv.nvmlDeviceGetPowerUsage(h) / 1e3, self.interval_s)
            self._sampler.start()
        self._t0 = time.perf_counter()

    def stop(self, items: int | None = None) -> EnergyResult:
        """End the span; ``items`` (how many inputs were processed) gives ``energy_per_item_j``."""
        if not self._started:
            self.result = EnergyResult(reason="the span was never started (the measurement failed before it)")
            return self.result
        if self._reason is not None:
            if self._nv is not None:
                with contextlib.suppress(Exception):
                    self._nv.nvmlShutdown()
            self.result = EnergyResult(reason=self._reason)
            return self.result
        nv, h = self._nv, self._handle
        try:
            if self._e0 is not None:
                duration = time.perf_counter() - self._t0
                energy = (int(nv.nvmlDeviceGetTotalEnergyConsumption(h)) - self._e0) / 1e3
                method, n = "energy_counter", None
            else:
                assert self._sampler is not None
                energy, duration = self._sampler.stop()
                method, n = "power_sampling", len(self._sampler.samples)
        except Exception as e:
            self.result = EnergyResult(reason=f"energy reading failed: {type(e).__name__}: {e}")
            return self.result
        finally:
            with contextlib.suppress(Exception):
                nv.nvmlShutdown()
        self.result = EnergyResult(
            energy_j=energy, duration_s=duration, method=method, power_samples=n,
            mean_power_w=energy / duration if duration > 0 else None,
            energy_per_item_j=energy / items if items else None)
        return self.result

    def __enter__(self) -> EnergyMeter:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
