"""The frameworks AION has an adapter for, and all that the tests need to know of each: one table.

Adding a framework is one entry in :data:`FRAMEWORKS`, its folder ``tests/<name>/``, its marker
in pyproject.toml and its session in noxfile.py; ``conftest.py``, ``noxfile.py``,
``test_api.py``, ``test_core.py``, ``test_install.py`` and ``test_typing.py`` read the rest from
here, and ``test_frameworks.py`` checks the table against ``aion_conformance.registry`` and the
tree. The suite's tiers by file (:data:`INTEGRATION`, :data:`PACKAGING`) are here too:
conftest.py marks each test with one.

No framework is imported when this module is (``noxfile.py`` reads it too): each import is
inside the function that needs it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

#: The test files that start processes (``aion_conformance.registry``, ``subprocess``,
#: ``mp.spawn``): the ``integration`` tier. conftest.py marks every other test ``unit``...
INTEGRATION = frozenset({
    "tests/test_cli.py", "tests/test_conformance.py", "tests/test_docs.py", "tests/test_evidence.py",
    "tests/test_fuzz.py", "tests/test_gpu_check.py", "tests/test_stability.py",
    "tests/torch/test_ddp.py", "tests/torch/test_export.py", "tests/torch/test_original_suite.py",
    "tests/torch/test_parallel.py",
    "tests/flax/test_flax_distributed.py",
    "tests/mlx/test_mlx_distributed.py",
})
#: ... or ``packaging``: the package as a user gets it, built, installed, type-checked.
PACKAGING = frozenset({"tests/test_install.py", "tests/test_outside_driver.py", "tests/test_typing.py"})
#: Comma-separated registry names (``AION_TEST_BACKENDS=torch,numpy``) that narrow a run.
SELECT_ENV = "AION_TEST_BACKENDS"
#: Registry backends of no framework: the array-API core itself.
CORE_BACKENDS = ("numpy", "array-api-strict")
#: Import name -> folder of the packages that are no adapter (pyproject's package-dir).
CORE_PACKAGES = {"aion_core": "aion_core", "aion_conformance": "conformance"}


@dataclass(frozen=True)
class Api:
    """One API of an adapter: where its layers come from and how a test drives them."""

    id: str  # the test id; the registry name where the API is one backend
    module: str  # import name of the module holding AionResidual, AionScale, AionBlock
    backends: tuple[str, ...]  # the registry backends it runs as
    call: str  # the method that carries the call signature
    own: frozenset[str]  # constructor arguments of the framework's convention, after the common ones
    branch: Callable[[], Any]  # a 4 -> 4 branch layer of the framework
    run: Callable[[Any, Any], Any]  # runs a block on a numpy array, given as the framework's array
    script: str  # test_typing.py: lines of a user's script making the objects `reveals` names
    reveals: Mapping[str, str]  # test_typing.py: reveal_type(expression) -> what mypy must say


@dataclass(frozen=True)
class Install:
    """test_install.py: one fresh environment, our wheel with one framework alone."""

    name: str
    extra: str  # ours, installed with the pins below: pip checks that they satisfy its ranges
    pins: tuple[str, ...]  # distributions pinned by requirements/test.txt
    present: tuple[str, ...]  # import names that must import; every other framework's must not
    env: Mapping[str, str]
    backends: tuple[str, ...]  # the registry backends it stands for


@dataclass(frozen=True)
class Namespace:
    """test_core.py: an array namespace aion_core runs on unchanged."""

    name: str
    load: Callable[[], tuple[Any, Callable[[Any], Any]]]  # -> (xp, numpy array -> float64 array of xp)
    backends: tuple[str, ...]
    float64: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext


@dataclass(frozen=True)
class Framework:
    name: str  # its marker, its folder tests/<name>/ and its nox session
    package: str  # the adapter's import name
    folder: str  # the adapter's folder in the tree (pyproject's package-dir)
    backends: tuple[str, ...]  # its names in aion_conformance.registry.BACKENDS
    imports: tuple[str, ...]  # import names of the framework and of the backends its extras bring
    extras: Mapping[str, frozenset[str]]  # our pip extras for it -> the distributions each requires
    apis: tuple[Api, ...]
    installs: tuple[Install, ...]
    train: str  # test_install.py: trains 3 SGD steps of `module.AionBlock` on x, y -> `losses`, `steps`
    namespaces: tuple[Namespace, ...] = ()
    support: Mapping[str, str] = field(default_factory=dict)  # more packages of its own: import name -> folder
    #: When set, tests/<name>/ runs once per backend, each in a process with this environment
    #: (a Keras backend is fixed when Keras is imported), and this says which one a process is.
    process_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    current: Callable[[], str] | None = None

    def process_backends(self) -> tuple[str, ...]:
        """The backends the tests in this process run on: every one, or the process's own."""
        return (self.current(),) if self.current is not None else self.backends


# ---- PyTorch ----------------------------------------------------------------------------------

def _torch_branch() -> Any:
    import torch

    return torch.nn.Linear(4, 4)


def _torch_run(block: Any, a: Any) -> Any:
    import numpy as np
    import torch

    return block(torch.from_numpy(np.asarray(a)))


def _torch_namespace() -> tuple[Any, Callable[[Any], Any]]:
    import array_api_compat.torch as xp
    import numpy as np
    import torch

    return xp, lambda a: torch.from_numpy(np.asarray(a, np.float64))


TORCH = Framework(
    name="torch", package="aion_pytorch", folder="backends/aion_pytorch", backends=("torch",),
    imports=("torch",), extras={"torch": frozenset({"torch"})},
    apis=(Api("torch", "aion_pytorch", ("torch",), "forward", frozenset({"process_group"}),
              _torch_branch, _torch_run,
              script="""\
import torch
import aion_pytorch
x = torch.ones(2, 16)
residual = aion_pytorch.AionResidual(alpha0=0.1, beta=0.05)
block = aion_pytorch.AionBlock(torch.nn.Linear(16, 16), dim=16)
out = block(x)
""",
              reveals={
                  "aion_pytorch.__version__": "str",
                  # Module.__call__ is typed Any by torch itself, so the types are on forward.
                  "residual": "aion_pytorch.residual.AionResidual",
                  "residual.config": "aion_core.config.AionConfig",
                  "block": "aion_pytorch.residual.AionBlock",
                  "block.config": "aion_core.config.AionConfig",
                  "residual.forward(x, x)": "torch._tensor.Tensor | tuple[torch._tensor.Tensor, "
                                            "dict[str, torch._tensor.Tensor]]",
                  "block.forward(x)": "torch._tensor.Tensor | tuple[torch._tensor.Tensor, "
                                      "dict[str, torch._tensor.Tensor]]",
                  "aion_pytorch.energy(x)": "torch._tensor.Tensor",
              }),),
    # Its venv is made once for two tests (tests/test_install.py's torch_venv), hence last there.
    installs=(Install("torch", "torch", ("torch",), ("torch",), {"PYTHONDONTWRITEBYTECODE": ""}, ("torch",)),),
    train="""\
import torch
torch.manual_seed(0)
block = module.AionBlock(torch.nn.Linear(16, 16), dim=16)
opt = torch.optim.SGD(block.parameters(), lr=0.05)
losses = []
for _ in range(3):
    opt.zero_grad()
    loss = (block(torch.from_numpy(x)) - torch.from_numpy(y)).square().mean()
    loss.backward()
    opt.step()
    losses.append(loss.item())
steps = int(block.aion.step_count)
""",
    namespaces=(Namespace("torch", _torch_namespace, ("torch",)),),
    support={"aion_torch_ops": "backends/aion_torch_ops"},  # its ops, shared with aion_keras on torch
)


# ---- Keras 3 (one process per backend) --------------------------------------------------------

def _keras_branch() -> Any:
    import keras

    return keras.layers.Dense(4)


def _keras_run(block: Any, a: Any) -> Any:
    return block(a)


def _keras_current() -> str:
    """``keras-<backend>`` of this process: Keras' own answer once imported, else KERAS_BACKEND's."""
    keras = sys.modules.get("keras")
    backend = keras.backend.backend() if keras is not None else os.environ.get("KERAS_BACKEND", "tensorflow")
    return f"keras-{backend}"


KERAS_BACKENDS = ("tensorflow", "jax", "torch")
KERAS = Framework(
    name="keras", package="aion_keras", folder="backends/aion_keras",
    backends=tuple(f"keras-{b}" for b in KERAS_BACKENDS),
    imports=("keras", "tensorflow"),
    extras={"keras": frozenset({"keras"}), "tensorflow": frozenset({"keras", "tensorflow"})},
    apis=(Api("keras", "aion_keras", tuple(f"keras-{b}" for b in KERAS_BACKENDS), "call", frozenset({"kwargs"}),
              _keras_branch, _keras_run,
              script="""\
import keras  # type: ignore[import-untyped]  # keras ships no py.typed marker
import aion_keras
k_residual = aion_keras.AionResidual(alpha0=0.1, beta=0.05)
k_block = aion_keras.AionBlock(keras.layers.Dense(16), dim=16)
k_out = k_block(np.ones((2, 16), "float32"))
""",
              reveals={
                  "aion_keras.__version__": "str",
                  # A tensor is the backend's (Any); the structure is still declared.
                  "k_residual": "aion_keras.residual.AionResidual",
                  "k_residual.config": "aion_core.config.AionConfig",
                  "k_block": "aion_keras.residual.AionBlock",
                  "k_block.config": "aion_core.config.AionConfig",
                  "k_block.call(np.ones((2, 16)))": "Any | tuple[Any, dict[str, Any]]",
              }),),
    # `[tensorflow]` names `tensorflow`, the pinned set has `tensorflow-cpu` (the same modules,
    # without CUDA), so that venv takes `[keras]` and the pin.
    installs=(Install("keras-tensorflow", "keras", ("keras", "tensorflow-cpu"), ("keras", "tensorflow"),
                      {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}, ("keras-tensorflow",)),
              Install("keras-jax", "keras,jax", ("keras", "jax", "jaxlib"), ("keras", "jax"),
                      {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}, ("keras-jax",))),
    train="""\
import keras
assert keras.backend.backend() == os.environ["KERAS_BACKEND"], keras.backend.backend()
keras.utils.set_random_seed(0)
block = module.AionBlock(keras.layers.Dense(16), dim=16)
model = keras.Sequential([keras.Input((16,)), block])
model.compile(keras.optimizers.SGD(0.05), "mse")
losses = model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0).history["loss"]
steps = int(keras.ops.convert_to_numpy(block.aion.step_count))
""",
    process_env={f"keras-{b}": {"KERAS_BACKEND": b} for b in KERAS_BACKENDS},
    current=_keras_current,
)


# ---- Flax (NNX and Linen) on JAX --------------------------------------------------------------

def _nnx_branch() -> Any:
    from flax import nnx

    return nnx.Linear(4, 4, rngs=nnx.Rngs(0))


def _nnx_run(block: Any, a: Any) -> Any:
    import jax.numpy as jnp

    return block(jnp.asarray(a))


def _linen_branch() -> Any:
    import flax.linen as nn

    return nn.Dense(4)


def _linen_run(block: Any, a: Any) -> Any:
    import jax
    import jax.numpy as jnp

    return block.init(jax.random.key(0), jnp.asarray(a), deterministic=False)


def _jax_namespace() -> tuple[Any, Callable[[Any], Any]]:
    import jax.numpy as xp

    return xp, lambda a: xp.asarray(a, dtype=xp.float64)


@contextlib.contextmanager
def _jax_x64() -> Iterator[None]:
    """float64 in jax for one test only (the flag is process-wide)."""
    import jax

    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


FLAX = Framework(
    name="flax", package="aion_flax", folder="backends/aion_flax", backends=("flax-nnx", "flax-linen"),
    imports=("jax", "flax"),
    extras={"jax": frozenset({"jax"}), "flax": frozenset({"jax", "flax"})},
    apis=(Api("flax-nnx", "aion_flax", ("flax-nnx",), "__call__",
              frozenset({"axis_name", "deterministic", "dtype", "param_dtype", "rngs"}), _nnx_branch, _nnx_run,
              script="""\
import jax.numpy as jnp
from flax import nnx
import aion_flax
f_residual = aion_flax.AionResidual(alpha0=0.1, beta=0.05)
f_block = aion_flax.AionBlock(nnx.Linear(16, 16, rngs=nnx.Rngs(0)), 16)
""",
              reveals={
                  "aion_flax.__version__": "str",
                  "f_residual": "aion_flax.nnx.AionResidual",
                  "f_residual.config": "aion_core.config.AionConfig",
                  "f_block": "aion_flax.nnx.AionBlock",
                  "f_block.config": "aion_core.config.AionConfig",
                  "f_block(jnp.ones((2, 16)))": "jax._src.basearray.Array | tuple[jax._src.basearray.Array, "
                                                "dict[str, jax._src.basearray.Array]]",
              }),
          # (`dim` allowed there too: a Linen module's arguments are its dataclass fields.)
          Api("flax-linen", "aion_flax.linen", ("flax-linen",), "__call__",
              frozenset({"axis_name", "deterministic", "dtype", "param_dtype", "parent", "name", "dim"}),
              _linen_branch, _linen_run,
              script="""\
import flax.linen as nn
import jax
import jax.numpy as jnp
import aion_flax.linen
l_residual = aion_flax.linen.AionResidual(alpha0=0.1, beta=0.05)
l_block = aion_flax.linen.AionBlock(nn.Dense(16), dim=16)
variables = l_block.init(jax.random.key(0), jnp.ones((2, 16)), deterministic=True)
""",
              reveals={
                  "l_residual": "aion_flax.linen.AionResidual",
                  "l_residual.config": "aion_core.config.AionConfig",
                  "l_block": "aion_flax.linen.AionBlock",
                  "l_block.config": "aion_core.config.AionConfig",
              })),
    installs=(Install("flax", "flax", ("jax", "jaxlib", "flax", "optax"), ("jax", "flax", "optax"),
                      {"JAX_PLATFORMS": "cpu"}, ("flax-nnx", "flax-linen")),),
    train="""\
import jax.numpy as jnp
import optax
from flax import nnx
block = module.AionBlock(nnx.Linear(16, 16, rngs=nnx.Rngs(0)), 16)
opt = nnx.Optimizer(block, optax.sgd(0.05), wrt=nnx.Param)

@nnx.jit
def train_step(model, opt, x, y):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    opt.update(model, grads)
    return loss

losses = [float(train_step(block, opt, jnp.asarray(x), jnp.asarray(y))) for _ in range(3)]
steps = int(block.aion.step_count[...])
""",
    namespaces=(Namespace("jax", _jax_namespace, ("flax-nnx", "flax-linen"), _jax_x64),),
)


# ---- MLX (on Linux: its CPU build) ------------------------------------------------------------

def _mlx_branch() -> Any:
    import mlx.nn as nn

    return nn.Linear(4, 4)


def _mlx_run(block: Any, a: Any) -> Any:
    import mlx.core as mx
    import numpy as np

    return block(mx.array(np.asarray(a)))


def _mlx_namespace() -> tuple[Any, Callable[[Any], Any]]:
    import mlx.core as mx
    import numpy as np

    return mx, lambda a: mx.array(np.asarray(a, np.float64), dtype=mx.float64)


MLX = Framework(
    name="mlx", package="aion_mlx", folder="backends/aion_mlx", backends=("mlx",),
    imports=("mlx",), extras={"mlx": frozenset({"mlx[cpu]"})},
    apis=(Api("mlx", "aion_mlx", ("mlx",), "__call__", frozenset({"group"}), _mlx_branch, _mlx_run,
              script="""\
import mlx.core as mx
import mlx.nn
import aion_mlx
m_residual = aion_mlx.AionResidual(alpha0=0.1, beta=0.05)
m_block = aion_mlx.AionBlock(mlx.nn.Linear(16, 16), dim=16)
""",
              reveals={
                  "aion_mlx.__version__": "str",
                  "m_residual": "aion_mlx.layers.AionResidual",
                  "m_residual.config": "aion_core.config.AionConfig",
                  "m_block": "aion_mlx.layers.AionBlock",
                  "m_block.config": "aion_core.config.AionConfig",
                  "m_block(mx.ones((2, 16)))": "mlx.core.array | tuple[mlx.core.array, dict[str, mlx.core.array]]",
              }),),
    installs=(Install("mlx", "mlx", ("mlx", "mlx-cpu"), ("mlx",), {}, ("mlx",)),),
    train="""\
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
mx.random.seed(0)
block = module.AionBlock(nn.Linear(16, 16), dim=16)
opt = optim.SGD(learning_rate=0.05)
loss_and_grad = nn.value_and_grad(block, lambda m, a, b: ((m(a) - b) ** 2).mean())
losses = []
for _ in range(3):
    loss, grads = loss_and_grad(block, mx.array(x), mx.array(y))
    opt.update(block, grads)
    mx.eval(block.parameters(), opt.state)
    losses.append(loss.item())
steps = block.aion.step_count.item()
""",
    namespaces=(Namespace("mlx", _mlx_namespace, ("mlx",)),),
)


#: Every framework with an adapter, in the order the tests list them.
FRAMEWORKS: tuple[Framework, ...] = (TORCH, KERAS, FLAX, MLX)


# ---- What the tests read ----------------------------------------------------------------------

def _numpy_namespace() -> tuple[Any, Callable[[Any], Any]]:
    import array_api_compat.numpy as xp
    import numpy as np

    return xp, lambda a: np.asarray(a, np.float64)


def _strict_namespace() -> tuple[Any, Callable[[Any], Any]]:
    import array_api_strict as xp

    return xp, lambda a: xp.asarray(a, dtype=xp.float64)


#: aion_core's array namespaces: the core's own, then each framework's.
NAMESPACES: dict[str, Namespace] = {ns.name: ns for ns in (
    Namespace("numpy", _numpy_namespace, ("numpy",)),
    Namespace("array_api_strict", _strict_namespace, ("array-api-strict",)),
    *(ns for fw in FRAMEWORKS for ns in fw.namespaces))}
APIS: dict[str, Api] = {api.id: api for fw in FRAMEWORKS for api in fw.apis}
INSTALLS: dict[str, Install] = {inst.name: inst for fw in FRAMEWORKS for inst in fw.installs}
#: Import name -> folder in the tree of every package (pyproject's package-dir).
PACKAGES: dict[str, str] = {**CORE_PACKAGES, **{name: folder for fw in FRAMEWORKS
                                                 for name, folder in {fw.package: fw.folder, **fw.support}.items()}}
#: Every registry backend, the core's and the frameworks'.
ALL_BACKENDS: tuple[str, ...] = (*CORE_BACKENDS, *(b for fw in FRAMEWORKS for b in fw.backends))


def tier(path: str) -> str:
    """The tier of the tests in ``path`` (relative to the repository, with ``/``)."""
    return "packaging" if path in PACKAGING else "integration" if path in INTEGRATION else "unit"


def framework_of(entry: Api | Install | Namespace) -> Framework:
    """The framework that lists ``entry``."""
    return next(fw for fw in FRAMEWORKS if entry in (*fw.apis, *fw.installs, *fw.namespaces))


def owners(backends: Iterable[str]) -> list[Framework]:
    """The frameworks those registry backends belong to."""
    names = set(backends)
    return [fw for fw in FRAMEWORKS if names & set(fw.backends)]


def selected() -> frozenset[str] | None:
    """The backends ``AION_TEST_BACKENDS`` names; None when it is unset or empty (every backend).

    Raises
    ------
    ValueError
        A name that is no registry backend.
    """
    names = frozenset(n.strip() for n in os.environ.get(SELECT_ENV, "").split(",") if n.strip())
    if not names:
        return None
    unknown = sorted(names - set(ALL_BACKENDS))
    if unknown:
        raise ValueError(f"{SELECT_ENV}: unknown backend(s) {', '.join(unknown)}; "
                         f"the registry has {', '.join(ALL_BACKENDS)}")
    return names


def params(entries: Iterable[Api | Install | Namespace], *also: Any) -> list[Any]:
    """``pytest.param`` of each entry's name (then ``also``), marked with the backends it runs.

    conftest.py reads the ``backends`` marker: the framework markers follow from it, and
    ``AION_TEST_BACKENDS`` deselects a parameter none of whose backends it names.
    """
    import pytest

    out = []
    for entry in entries:
        name = entry.id if isinstance(entry, Api) else entry.name
        values = (name, *(getattr(entry, a) for a in also))
        out.append(pytest.param(*values, id="-".join(values), marks=pytest.mark.backends(*entry.backends)))
    return out
