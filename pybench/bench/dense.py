"""The dense side of a worker: data loaders and the dense models (trained once per [train], cached in the run
folder's ``cache/``), with their parameter and MAC counts."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from pathlib import Path
from typing import Any

from pybench.bench.config import Cell, jsonable
from pybench.bench.protocol import atomic_write


def digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def state_bytes(obj: Any) -> bytes:
    """``torch.save`` of ``obj`` into bytes (written atomically by the caller)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def example_input(cell: Cell, batch: int | None = None) -> Any:
    """A seeded random input of the cell's input size (batch ``batch`` or the prune example batch)."""
    import torch

    g = torch.Generator().manual_seed(cell.seed)
    n = batch or (cell.prune.example_batch_size if cell.prune else 1)
    return torch.randn(n, *cell.model_config.input_size, generator=g)


def loader_defaults(name: str, device: str) -> dict[str, Any]:
    """Loader options for training on ``device``: on CUDA, pinned host memory (asynchronous copies) and, for a
    dataset decoded from files, worker processes; in-memory datasets load fastest in the main process."""
    import os

    from pybench import data

    if not device.startswith("cuda"):
        return {}
    workers = min(4, os.cpu_count() or 1) if name in data.READ_FROM_A_FOLDER else 0
    return {"pin_memory": True, "num_workers": workers}


class Context:
    """Per-worker state: data loaders, dense models and their figures, reused across the chunk's groups."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cache = folder / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self._loaders: dict[str, Any] = {}
        self._dense: dict[str, tuple[Any, dict[str, Any]]] = {}

    def loaders(self, cell: Cell) -> Any:
        d = cell.data
        if not d.name:
            return None
        from pybench import data

        options = {**loader_defaults(d.name, cell.work_device), **d.options}  # [data]'s own options win
        key = digest([jsonable(d), options, cell.data_root, cell.seed])
        if key not in self._loaders:
            self._loaders[key] = data.loaders(d.name, root=cell.data_root or None, batch_size=d.batch_size,
                                              eval_batch_size=d.eval_batch_size, seed=cell.seed, **options)
        return self._loaders[key]

    def dense(self, cell: Cell) -> tuple[Any, dict[str, Any]]:
        """The dense model of ``cell`` (trained per [train] once, cached in the run folder) and its figures."""
        import torch

        from pybench import measure, train, zoo

        mc = cell.model_config
        key = digest({"model": cell.model, "model_config": jsonable(mc), "train": jsonable(cell.train),
                      "data": jsonable(cell.data), "seed": cell.seed})
        if key in self._dense:
            return self._dense[key]
        torch.manual_seed(cell.seed)  # the random init is part of the cell's definition
        model = zoo.create(cell.model, num_classes=mc.num_classes, weights=mc.weights, **mc.kwargs)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", cell.model)  # timm:NAME, module:callable, plugin names
        path = self.cache / f"dense-{safe}-{key}.pt"
        info: dict[str, Any] = {"trained": False}
        t = cell.train
        if path.exists():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            info["trained"] = t.epochs > 0
        elif t.epochs > 0:
            ld = self.loaders(cell)
            t0 = time.perf_counter()
            train.train(model, ld.train, t.epochs, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                        optimizer=t.optimizer, scheduler=t.scheduler or None, seed=cell.seed,
                        max_batches=t.max_batches or None, progress=False, device=cell.work_device)
            train.recalibrate_bn(model, ld.train, t.bn_recalibrate_batches)
            model.cpu()  # the worker keeps models on the CPU; each measurement moves its copy to the cell's device
            info.update(trained=True, train_s=time.perf_counter() - t0, train_device=cell.work_device)
            atomic_write(path, state_bytes(model.state_dict()))
        model.eval()
        fl = measure.flops(model, example_input(cell))
        info.update(params=fl.params, macs=fl.total_macs)
        self._dense[key] = (model, info)
        return model, info
