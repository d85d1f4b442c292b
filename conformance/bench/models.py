"""The overhead benchmark model on every backend, as a ``step()`` closure per variant.

4 pre-norm feed-forward blocks (LayerNorm, Linear(D, 4D), GELU, Linear(4D, D)) on a
(B, T, D) batch, AdamW(lr 1e-3, betas 0.9/0.95, no weight decay), MSE to a random target.
Variants: ``plain`` (``x + y``), ``aion`` (AionBlock, k_update=1), ``aion-k4`` (k_update=4),
and on torch ``aion-torch-1.0.2`` (the original's AionBlock, when installed) and ``aion-floor``
(:mod:`aion_conformance.bench.floor`, the fewest-op eager bound).
Each ``step()`` runs one training step and waits for it to finish on the device.
"""

from __future__ import annotations

import numpy as np

BLOCKS = 4
#: torch only: the eager floor (:mod:`aion_conformance.bench.floor`), a bound, not an implementation.
FLOOR = "aion-floor"


def _data(batch, seq, width):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((batch, seq, width)).astype("float32"),
            rng.standard_normal((batch, seq, width)).astype("float32"))


def _k(variant):
    return 4 if variant == "aion-k4" else 1


def _aion_kwargs(variant):
    if variant == "aion-local-ratio":  # the DDP bench (bench/ddp.py): each rank's own ratio
        return {"k_update": 1, "sync_ratio": False}
    return {} if variant in ("aion-torch-1.0.2", FLOOR) else {"k_update": _k(variant)}


def torch_model(width: int, variant: str, blocks: int = BLOCKS):
    """The benchmark network on torch (seeded): ``blocks`` pre-norm feed-forward blocks."""
    import torch

    from aion_conformance import original
    from aion_pytorch import AionBlock

    from aion_conformance.bench.floor import FloorBlock

    block_cls = {"aion-torch-1.0.2": lambda: original.load().AionBlock, FLOOR: lambda: FloorBlock}.get(
        variant, lambda: AionBlock)()
    torch.manual_seed(0)

    def ff():
        return torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(),
                                   torch.nn.Linear(4 * width, width))

    class PlainBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.layer = torch.nn.LayerNorm(width), ff()

        def forward(self, x):
            return x + self.layer(self.norm(x))

    return torch.nn.Sequential(*[PlainBlock() if variant == "plain" else
                                 block_cls(ff(), width, **_aion_kwargs(variant)) for _ in range(blocks)])


def torch_step(width: int, variant: str, batch: int, seq: int, device: str = "auto", compiled: bool = False):
    """``device``: ``cpu``, ``cuda`` or ``auto`` (CUDA when available). ``compiled``: the model
    under ``torch.compile`` (forward and backward; the optimizer step stays eager)."""
    import torch

    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model = torch_model(width, variant).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    forward = torch.compile(model) if compiled else model
    x, target = (torch.from_numpy(a).to(dev) for a in _data(batch, seq, width))

    def train():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(forward(x), target).backward()
        opt.step()

    if dev != "cuda":
        return train, f"{dev} {'compile' if compiled else 'eager'}"
    events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]

    def step():  # the device time of the step, from CUDA events
        events[0].record()
        train()
        events[1].record()
        events[1].synchronize()
        return events[0].elapsed_time(events[1]) / 1e3

    return step, f"{torch.cuda.get_device_name()} {'compile' if compiled else 'eager'}"


def _keras_device(backend: str) -> str:
    if backend == "jax":
        import jax

        return jax.devices()[0].platform
    if backend == "torch":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def keras_step(width: int, variant: str, batch: int, seq: int, jit: bool | None = None):
    """``jit``: ``model.compile(jit_compile=...)`` (XLA on TensorFlow and JAX, ``torch.compile``
    on PyTorch); None: the suite's default, jit on TensorFlow and JAX, eager on PyTorch (whose
    ``torch.compile`` takes a minute or more per model). Without jit, TensorFlow still runs a
    ``tf.function`` graph; JAX and PyTorch run op by op."""
    import keras

    from aion_keras import AionBlock

    keras.utils.set_random_seed(0)

    def ff():
        return keras.Sequential([keras.layers.Dense(4 * width, activation="gelu"), keras.layers.Dense(width)])

    class PlainBlock(keras.layers.Layer):
        # AionBlock's structure (a layer holding norm and branch), minus AION: a functional
        # graph of LayerNormalization and Add layers is not the same work under XLA.
        def __init__(self):
            super().__init__()
            self.norm = keras.layers.LayerNormalization(epsilon=1e-5)
            self.layer = ff()

        def call(self, x):
            return x + self.layer(self.norm(x))

    inp = keras.Input((seq, width))
    h = inp
    for _ in range(BLOCKS):
        h = PlainBlock()(h) if variant == "plain" else AionBlock(ff(), width, k_update=_k(variant))(h)
    model = keras.Model(inp, h)
    backend = keras.backend.backend()
    jit = backend != "torch" if jit is None else jit
    model.compile(keras.optimizers.AdamW(1e-3, beta_1=0.9, beta_2=0.95, weight_decay=0.0), "mse",
                  jit_compile=jit)
    # The backend's own tensors, made once (as on torch and Flax): numpy inputs would be copied
    # to the device every step, and under torch.compile a numpy input breaks the graph.
    x, target = (keras.ops.convert_to_tensor(a) for a in _data(batch, seq, width))

    def step():
        model.train_on_batch(x, target)  # returns the loss as a Python float: waits for the device

    return step, f"{_keras_device(backend)} {keras_mode(backend, jit)}"


def keras_mode(backend: str, jit: bool) -> str:
    """What a Keras step runs as: ``jit`` (XLA), ``compile`` (torch.compile), ``graph``
    (a ``tf.function`` without XLA) or ``eager``."""
    if jit:
        return "compile" if backend == "torch" else "jit"
    return "graph" if backend == "tensorflow" else "eager"


def flax_nnx_step(width: int, variant: str, batch: int, seq: int):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import aion_flax

    def ff(rngs):
        return nnx.Sequential(nnx.Linear(width, 4 * width, rngs=rngs), nnx.gelu,
                              nnx.Linear(4 * width, width, rngs=rngs))

    class PlainBlock(nnx.Module):
        def __init__(self, rngs):
            # AionBlock's LayerNorm: epsilon 1e-5 and the two-pass variance.
            self.norm = nnx.LayerNorm(width, epsilon=1e-5, use_fast_variance=False, rngs=rngs)
            self.layer = ff(rngs)

        def __call__(self, x):
            return x + self.layer(self.norm(x))

    rngs = nnx.Rngs(0)
    blocks = [PlainBlock(rngs) if variant == "plain" else
              aion_flax.AionBlock(ff(rngs), width, k_update=_k(variant), rngs=rngs) for _ in range(BLOCKS)]
    model = nnx.Sequential(*blocks)
    opt = nnx.Optimizer(model, optax.adamw(1e-3, b1=0.9, b2=0.95, weight_decay=0.0), wrt=nnx.Param)
    x, target = (jnp.asarray(a) for a in _data(batch, seq, width))

    # Python work per step grows with the number of Variables (AION adds five per block):
    # nnx.jit walks the module graph on every call, and a State of Variables is flattened
    # and rebuilt Variable by Variable in Python. So: split once, strip the Variables
    # (nnx.as_pure: plain arrays, flattened in C++ as Linen's dicts are), jit a pure function.
    graphdef, state = nnx.split((model, opt))
    state = nnx.as_pure(state)

    @jax.jit
    def train(state):
        model, opt = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(model)
        opt.update(model, grads)
        return nnx.as_pure(nnx.state((model, opt))), loss

    carry = {"state": state}

    def step():
        carry["state"], loss = train(carry["state"])
        loss.block_until_ready()

    return step, jax.devices()[0].platform + " jit"


def flax_linen_step(width: int, variant: str, batch: int, seq: int):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    import aion_flax.linen as aion_linen

    class FF(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(width)(nn.gelu(nn.Dense(4 * width)(x)))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(BLOCKS):
                if variant == "plain":  # AionBlock's LayerNorm: epsilon 1e-5, two-pass variance
                    x = x + FF()(nn.LayerNorm(epsilon=1e-5, use_fast_variance=False)(x))
                else:
                    x = aion_linen.AionBlock(FF(parent=None), k_update=_k(variant))(x, deterministic=False)
            return x

    model = Net()
    x, target = (jnp.asarray(a) for a in _data(batch, seq, width))
    variables = model.init(jax.random.key(0), x)
    params, stats = variables["params"], variables.get(aion_linen.STATS_COLLECTION, {})
    tx = optax.adamw(1e-3, b1=0.9, b2=0.95, weight_decay=0.0)
    opt_state = tx.init(params)

    @jax.jit
    def train(params, stats, opt_state):
        def loss_fn(p):
            out, upd = model.apply({"params": p, aion_linen.STATS_COLLECTION: stats}, x,
                                   mutable=[aion_linen.STATS_COLLECTION])
            return jnp.mean((out - target) ** 2), upd.get(aion_linen.STATS_COLLECTION, stats)

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    carry = {"state": (params, stats, opt_state)}

    def step():
        *state, loss = train(*carry["state"])
        carry["state"] = tuple(state)
        loss.block_until_ready()

    return step, jax.devices()[0].platform + " jit"
