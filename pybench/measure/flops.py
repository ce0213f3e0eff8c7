"""Multiply-accumulates and FLOPs of a forward pass, counted by torch.utils.flop_counter.FlopCounterMode.

FlopCounterMode counts the matmul-like ops (convolution, mm/addmm/bmm, attention) with 2 FLOPs per
multiply-accumulate; elementwise ops (BN, ReLU, adds, pooling) count zero, as in the pruning literature's tables.
So ``total_macs = total_flops / 2``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pybench.measure import _common as C


@dataclass
class FlopReport:
    """``per_module``: {qualified module name: MACs done in that module's own forward, children excluded} (the
    root's own work under ""), so its values add up to ``total_macs``. ``per_op``: {aten op: MACs}.
    ``params``: parameter count (shared parameters once)."""

    total_macs: int
    total_flops: int
    params: int
    per_module: dict[str, int] = field(default_factory=dict)
    per_op: dict[str, int] = field(default_factory=dict)
    input_shapes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def module_macs(self, name: str) -> int:
        """MACs of module ``name`` including its children (e.g. "layer1" or "layer1.0.conv1")."""
        prefix = name + "."
        return sum(v for k, v in self.per_module.items() if name == "" or k == name or k.startswith(prefix))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def flops(model: nn.Module, example_inputs: C.Inputs, device: str | torch.device = "cpu",
          dtype: str | torch.dtype = torch.float32) -> FlopReport:
    """Count MACs and FLOPs of ``model(example_inputs)`` (one forward, eval mode, no grad; the model is copied).

    The counts depend only on shapes, so CPU and float32 (the defaults) give the same answer as any device.
    Bad inputs raise ``MeasureInputError`` naming the model and the input shapes.
    """
    dev = C.resolve_device(device)
    dt = C.resolve_dtype(dtype, dev)
    name = type(model).__name__
    x = C.prepare_inputs(example_inputs, dev, dt)
    m = C.prepare_model(model, dev, dt)
    counter = FlopCounterMode(display=False)
    with counter:
        C.check_call(m, x, dev, dt, inference_mode=True, name=name)
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()

    # FlopCounterMode names modules "<RootClass>.<qualified name>" and counts inclusively; make them exclusive
    root = type(m).__name__
    inclusive: dict[str, int] = {}
    for key, ops in counts.items():
        if key == "Global":
            continue
        qual = "" if key == root else key.removeprefix(root + ".")
        inclusive[qual] = inclusive.get(qual, 0) + sum(ops.values())
    def depth(k: str) -> int:
        return 0 if k == "" else k.count(".") + 1

    per_module: dict[str, int] = {}
    for qual, v in inclusive.items():
        children = sum(w for k, w in inclusive.items()
                       if depth(k) == depth(qual) + 1 and (qual == "" or k.startswith(qual + ".")))
        if v - children:
            per_module[qual] = (v - children) // 2
    outside = total - inclusive.get("", 0)  # ops run outside the root module's forward (none for a plain call)
    if outside:
        per_module["<outside modules>"] = outside // 2
    per_op = {str(op).removeprefix("aten."): c // 2 for op, c in counts.get("Global", {}).items()}
    return FlopReport(total_macs=total // 2, total_flops=int(total), params=count_params(m),
                      per_module=per_module, per_op=per_op, input_shapes=C.input_shapes(x))
