"""The fully connected network of Sandor et al.'s XOR test (section 4.1): 2 inputs, one hidden ReLU layer of
``hidden`` neurons, and an output layer.

The paper uses one sigmoid output neuron. pybench defaults to ``outputs=2`` (two logits trained with
cross-entropy): softmax over two logits is the sigmoid of their difference, so it is the same classifier, and it
fits the rest of the harness (top-1 accuracy, cross-entropy, the never-pruned classifier) unchanged.
``outputs=1`` gives the paper's single logit (train it with BCE-with-logits; ``pybench.train`` does that when a
model has one output). The minimal network that separates the data has 3 hidden neurons.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register

__all__ = ["XorMLP"]


class XorMLP(nn.Module):
    """Linear(in_features, hidden) -> ReLU -> Linear(hidden, outputs)."""

    def __init__(self, hidden: int = 8, outputs: int = 2, in_features: int = 2) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"xor_mlp: hidden must be >= 1, got {hidden}")
        if outputs not in (1, 2):
            raise ValueError(f"xor_mlp: outputs must be 1 (one logit, as in the paper) or 2 (two-class logits), "
                             f"got {outputs}")
        self.fc1 = nn.Linear(in_features, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


@register("xor_mlp", input_size=(2,), default_num_classes=2, family="xor_mlp")
def xor_mlp(num_classes: int = 2, hidden: int = 8) -> XorMLP:
    """XOR network; ``num_classes`` is the number of outputs (2, or 1 for a single logit)."""
    return XorMLP(hidden=hidden, outputs=num_classes)
