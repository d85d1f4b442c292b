"""The PyTorch kit: what the conformance harness needs of torch, in one folder.

:mod:`.arrays` (numpy in and out, the device), :mod:`.autodiff` (value-and-grad),
:mod:`.optim` (the shared optimizers), :mod:`.blocks` (the problems' networks),
:mod:`.train` (a training step), :mod:`.driver` with its :mod:`.executions`; torch-only
tools beside them: :mod:`.original` (aion-torch 1.0.2), :mod:`.floor` (the eager bound),
:mod:`.bench_layer` and :mod:`.bench_ddp`.
"""

from aion_conformance.frameworks.torch.arrays import device, from_numpy, to_numpy, versions
from aion_conformance.frameworks.torch.blocks import EXTRA_RESIDUALS, build, read
from aion_conformance.frameworks.torch.train import evaluate, trainer

__all__ = ["EXTRA_RESIDUALS", "build", "device", "evaluate", "from_numpy", "read", "to_numpy", "trainer", "versions"]
