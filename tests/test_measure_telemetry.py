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
