"""pb.measure.telemetry and EnergyMeter: null-with-reason without a GPU/NVML, throttle decoding, power integration."""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import fields

import pytest
import torch

import pybench as pb

T = importlib.import_module("pybench.measure.telemetry")  # the package attribute is the function

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _nvml_works() -> bool:
    try:
        T._nvml().nvmlShutdown()
        return True
    except Exception:
        return False


def _all_null(snapshot: T.GpuTelemetry) -> bool:
    return all(getattr(snapshot, f.name) is None for f in fields(snapshot) if f.name not in ("reason", "unsupported"))


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "nonsense:device"])
def test_no_gpu_device_gives_nulls_and_a_reason(device) -> None:
    snap = pb.measure.telemetry(device)
    assert _all_null(snap) and snap.reason
    assert json.loads(json.dumps(snap.to_dict()))["reason"] == snap.reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_cuda_without_gpu_never_raises() -> None:
    for device in ("cuda", "cuda:3", 0):
        snap = pb.measure.telemetry(device)
        assert _all_null(snap) and "CUDA" in snap.reason
    energy = T.EnergyMeter("cuda")
    energy.start()
    r = energy.stop(items=10)
    assert r.energy_j is None and r.method is None and "CUDA" in r.reason


def test_missing_nvml_gives_nulls_and_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    if _nvml_works():
        pytest.skip("NVML works here")
    # pretend torch sees a GPU so the NVML path runs; NVML's own failure must become the reason
    monkeypatch.setattr(T, "_no_gpu_reason", lambda device: (torch.device("cuda", 0), None))
    snap = pb.measure.telemetry("cuda")
    assert _all_null(snap) and snap.reason.startswith("NVML unavailable")
    with T.EnergyMeter("cuda") as meter:
        pass
    assert meter.result.energy_j is None and meter.result.reason.startswith("NVML unavailable")


def test_throttle_names() -> None:
    assert T.throttle_names(0) == []
    assert T.throttle_names(0x1 | 0x4 | 0x40) == ["gpu_idle", "sw_power_cap", "hw_thermal_slowdown"]
    assert T.throttle_names(0x8 | 0x10000) == ["hw_slowdown", "0x10000"]


def test_power_sampler_integrates_a_known_power_curve() -> None:
    t0 = time.perf_counter()
    sampler = T.PowerSampler(lambda: 100.0 + 50.0 * (time.perf_counter() - t0), interval_s=0.002)  # P(t) = 100+50t
    sampler.start()
    time.sleep(0.1)
    energy, duration = sampler.stop()
    (ta, _), (tb, _) = sampler.samples[0], sampler.samples[-1]
    exact = 100.0 * (tb - ta) + 25.0 * ((tb - t0) ** 2 - (ta - t0) ** 2)  # a linear curve: trapezoids are exact
    assert len(sampler.samples) >= 3 and duration == pytest.approx(tb - ta)
    assert energy == pytest.approx(exact, rel=1e-2)  # the reading happens a moment after its timestamp


@cuda
@pytest.mark.cuda
def test_gpu_snapshot_and_energy() -> None:
    snap = pb.measure.telemetry("cuda")
    assert snap.reason is None and snap.name and snap.uuid.startswith("GPU-") and snap.driver
    assert snap.memory_total_bytes > 0 and isinstance(snap.throttle_reasons, list)
    x = torch.randn(4096, 4096, device="cuda")
    with T.EnergyMeter("cuda") as meter:
        for _ in range(200):
            x = (x @ x).clamp_(-1, 1)
        torch.cuda.synchronize()
    r = meter.result
    assert r.reason is None and r.method in ("energy_counter", "power_sampling") and r.energy_j > 0


class FakeNVML:
    """Stands in for pynvml with a GPU whose readings the test chooses (this machine has no GPU)."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    class NVMLError(Exception):
        pass

    def __init__(self, energy_counter: bool = True) -> None:
        self.energy_counter = energy_counter
        self.energy_mj = 1_000_000
        self.shutdowns = 0

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        return "h0"

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"h{index}"

    def nvmlDeviceGetName(self, h: str) -> bytes:
        return b"Fake GPU"

    def nvmlDeviceGetUUID(self, h: str) -> str:
        return "GPU-0000"

    def nvmlSystemGetDriverVersion(self) -> str:
        return "999.1"

    def nvmlDeviceGetMemoryInfo(self, h: str):
        return type("Mem", (), {"total": 80 * 2**30, "used": 2**30})()

    def nvmlDeviceGetClockInfo(self, h: str, kind: int) -> int:
        return {1: 1980, 2: 2619}[kind]

    def nvmlDeviceGetMaxClockInfo(self, h: str, kind: int) -> int:
        raise self.NVMLError("Not Supported")

    def nvmlDeviceGetPowerUsage(self, h: str) -> int:
        return 250_000  # mW

    def nvmlDeviceGetEnforcedPowerLimit(self, h: str) -> int:
        return 700_000

    def nvmlDeviceGetTemperature(self, h: str, sensor: int) -> int:
        return 41

    def nvmlDeviceGetUtilizationRates(self, h: str):
        return type("Util", (), {"gpu": 97})()

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: str) -> int:
        return 0x4

    def nvmlDeviceGetTotalEnergyConsumption(self, h: str) -> int:
        if not self.energy_counter:
            raise self.NVMLError("Not Supported")
        self.energy_mj += 12_345  # each reading: 12.345 J more
        return self.energy_mj


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    def install(**kwargs) -> FakeNVML:
        nv = FakeNVML(**kwargs)
        monkeypatch.setattr(T, "_no_gpu_reason", lambda device: (torch.device("cuda", 0), None))
        monkeypatch.setattr(T, "_nvml", lambda: nv)
        monkeypatch.setattr(T, "_handle", lambda nv_, dev: (nv_.nvmlDeviceGetHandleByIndex(0), 0))
        return nv
    return install


def test_snapshot_reads_every_field(fake_gpu) -> None:
    nv = fake_gpu()
    snap = pb.measure.telemetry("cuda")
    assert snap.reason is None and snap.index == 0 and snap.name == "Fake GPU" and snap.uuid == "GPU-0000"
    assert snap.driver == "999.1" and snap.memory_total_bytes == 80 * 2**30 and snap.memory_used_bytes == 2**30
    assert (snap.sm_clock_mhz, snap.mem_clock_mhz, snap.temperature_c, snap.utilization_pct) == (1980, 2619, 41, 97)
    assert snap.power_w == 250.0 and snap.power_limit_w == 700.0 and snap.throttle_reasons == ["sw_power_cap"]
    assert snap.sm_clock_max_mhz is None and snap.unsupported == ["sm_clock_max_mhz"]
    assert nv.shutdowns == 1


def test_energy_from_the_counter(fake_gpu) -> None:
    nv = fake_gpu()
    meter = T.EnergyMeter("cuda")
    meter.start()
    r = meter.stop(items=100)
    assert r.method == "energy_counter" and r.energy_j == pytest.approx(12.345)
    assert r.energy_per_item_j == pytest.approx(0.12345) and r.mean_power_w == pytest.approx(12.345 / r.duration_s)
    assert nv.shutdowns == 1


def test_energy_falls_back_to_sampled_power(fake_gpu) -> None:
    fake_gpu(energy_counter=False)
    with T.EnergyMeter("cuda", interval_s=0.002) as meter:
        time.sleep(0.05)
    r = meter.result
    assert r.method == "power_sampling" and r.power_samples >= 3
    assert r.energy_j == pytest.approx(250.0 * r.duration_s) and r.mean_power_w == pytest.approx(250.0)


def test_latency_carries_the_energy_of_its_timed_loop(fake_gpu) -> None:
    fake_gpu()
    r = pb.measure.latency(torch.nn.Linear(3, 2), torch.randn(4, 3), iters=5, energy=True)  # timed on the CPU
    assert r.energy.method == "energy_counter" and r.energy.energy_j == pytest.approx(12.345)
    assert r.energy.energy_per_item_j == pytest.approx(12.345 / (4 * 5))
