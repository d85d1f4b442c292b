"""The MLX kit: what the conformance harness needs of MLX, in one folder.

:mod:`.arrays` (numpy in and out, the device), :mod:`.autodiff` (value-and-grad),
:mod:`.optim` (the shared optimizers as :mod:`mlx.optimizers`), :mod:`.blocks` (the
problems' networks as :mod:`mlx.nn` modules), :mod:`.train` (a training step, eager or
under :func:`mlx.core.compile`) and :mod:`.driver` (the conformance driver of
:mod:`aion_mlx`).
"""

from aion_conformance.frameworks.mlx.arrays import device, from_numpy, to_numpy, versions
from aion_conformance.frameworks.mlx.blocks import EXTRA_RESIDUALS, build, read
from aion_conformance.frameworks.mlx.train import evaluate, trainer

__all__ = ["EXTRA_RESIDUALS", "build", "device", "evaluate", "from_numpy", "read", "to_numpy", "trainer", "versions"]
