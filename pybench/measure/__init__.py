"""The harness's instruments: latency (alone, or dense vs pruned paired), memory, FLOPs, accuracy, GPU
telemetry, environment, profiles.

Each returns a small dataclass whose ``to_dict()`` is JSON-able, so the suite runner stores it as is. Where
something cannot be measured here (no GPU, no NVML, out of memory) the result carries a reason instead of raising;
arguments that cannot work (a device that is not there, a dtype the device cannot run, inputs that do not fit the
model) raise ValueError naming the argument.
"""

from pybench.measure._common import MeasureInputError, pin_cpus
from pybench.measure.accuracy import AccuracyResult, accuracy
from pybench.measure.environment import Environment, environment
from pybench.measure.flops import FlopReport, flops
from pybench.measure.latency import LatencyResult, latency
from pybench.measure.memory import MemoryResult, memory
from pybench.measure.paired import PairedResult, paired_latency
from pybench.measure.profile import ProfileResult, profile
from pybench.measure.telemetry import EnergyMeter, EnergyResult, GpuTelemetry, telemetry

__all__ = [
    "AccuracyResult", "EnergyMeter", "EnergyResult", "Environment", "FlopReport", "GpuTelemetry", "LatencyResult",
    "MeasureInputError", "MemoryResult", "PairedResult", "ProfileResult", "accuracy", "environment", "flops",
    "latency", "memory", "paired_latency", "pin_cpus", "profile", "telemetry",
]
