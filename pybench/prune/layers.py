"""What the engine knows of torch.nn's layer types, in one table: which make channels and which normalise them.

Everything that asks "is this a producer / a norm" (the tracer's rules, surgery, criteria, masking) reads it here.
"""

from __future__ import annotations

import torch.nn as nn

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
PRODUCERS = (*CONVS, nn.Linear)  # their filters make a group's channels
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
SCALED_NORMS = (*BATCH_NORMS, nn.GroupNorm)  # a per-channel gamma that network slimming (bn_scale) reads
TRAINING_SENSITIVE = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)  # differ in train mode
