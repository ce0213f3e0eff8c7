"""Where a measurement was taken: software versions, pybench's op backend, CPU, GPUs, driver, git commit, host, time."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import socket
import subprocess
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch


@dataclass
class Environment:
    """The environment record stored with each result. Unknown pieces are None (never an exception)."""

    utc_time: str
    hostname: str
    python: str
    platform: str
    torch: str
    torchvision: str | None
    pybench: str | None
    pybench_backend: dict[str, str] | None
    cuda: str | None
    cudnn: int | None
    cpu_model: str | None
    cpu_cores_logical: int | None
    cpu_cores_physical: int | None
    cpu_affinity: int | None
    torch_threads: int
    memory_total_bytes: int | None
    gpus: list[dict[str, Any]] = field(default_factory=list)
    driver: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _gpus() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                     "memory_bytes": int(p.total_memory), "sm_count": int(p.multi_processor_count),
                     "uuid": str(getattr(p, "uuid", "")) or None})
    return gpus


def _driver() -> str | None:
    with contextlib.suppress(Exception):
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        finally:
            pynvml.nvmlShutdown()
    return None


def _pybench() -> tuple[str | None, dict[str, str] | None]:
    try:
        import pybench

        version = pybench.__version__
    except Exception:
        return None, None
    backend = None
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ops warns once when it runs on the reference; the record says so anyway
        from pybench import ops

        backend = dict(ops.backend())
    return version, backend


def environment() -> Environment:
    """Describe this machine and software: torch / CUDA / cuDNN / torchvision / pybench versions, pybench's op
    backend per device, CPU model and cores, GPUs, NVIDIA driver, the git commit of pybench's working tree (if it
    is one), hostname and UTC time."""
    try:
        import torchvision

        tv: str | None = torchvision.__version__
    except Exception:
        tv = None
    version, backend = _pybench()
    repo = Path(__file__).resolve().parents[2]
    commit = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain", "--untracked-files=no") if commit else None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return Environment(
        utc_time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        hostname=socket.gethostname(),
        python=platform.python_version(),
        platform=platform.platform(),
        torch=torch.__version__,
        torchvision=tv,
        pybench=version,
        pybench_backend=backend,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        cpu_model=_cpu_model(),
        cpu_cores_logical=psutil.cpu_count(logical=True),
        cpu_cores_physical=psutil.cpu_count(logical=False),
        cpu_affinity=affinity,
        torch_threads=torch.get_num_threads(),
        memory_total_bytes=int(psutil.virtual_memory().total),
        gpus=_gpus(),
        driver=_driver(),
        git_commit=commit,
        git_dirty=(status != "") if status is not None else None,
    )
