"""pb.measure.environment: the record describes this machine and checkout."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import warnings
from pathlib import Path

import psutil
import torch
import torchvision

import pybench as pb


def test_environment_matches_this_machine() -> None:
    env = pb.measure.environment()
    assert env.torch == torch.__version__ and env.torchvision == torchvision.__version__
    assert env.cuda == torch.version.cuda and env.pybench == pb.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert env.pybench_backend == pb.ops.backend()
    assert env.cpu_cores_logical == psutil.cpu_count() and env.torch_threads == torch.get_num_threads()
    assert len(env.gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    when = dt.datetime.fromisoformat(env.utc_time)
    assert when.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.timezone.utc) - when).total_seconds()) < 120
    json.dumps(env.to_dict())


def test_git_commit_is_the_checkout_head() -> None:
    repo = Path(pb.__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    env = pb.measure.environment()
    if head.returncode != 0:
        assert env.git_commit is None and env.git_dirty is None
    else:
        assert env.git_commit == head.stdout.strip() and isinstance(env.git_dirty, bool)
