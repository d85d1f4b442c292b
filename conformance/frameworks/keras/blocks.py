"""The networks of :mod:`aion_conformance.frameworks.net` as Keras models, and back.

Every sub-layer is built here from the description's numpy weights (Keras kernels are
``[in, out]``, as the description's), so a model is ready before its first call; its
``call`` returns ``(out, scales)`` as the description says.
"""

from __future__ import annotations

import math
from dataclasses import replace

import keras
from keras import ops

from aion_conformance.frameworks import net
from aion_conformance.frameworks.keras.arrays import numpy_of
from aion_core import STATE_SPEC, portable
from aion_keras import AionBlock, AionResidual

#: No residual kinds of its own: Keras has one implementation of AION, :mod:`aion_keras`.
EXTRA_RESIDUALS: dict = {}


def _gelu(x):
    # Exact (erf) GELU, as torch's nn.GELU() and the reference: keras.ops.gelu defaults to tanh.
    return ops.gelu(x, approximate=False)


_ACTIVATIONS = {None: None, "tanh": "tanh", "gelu": _gelu}


def _set(layer: keras.layers.Layer, shape: tuple, weights) -> keras.layers.Layer:
    """``layer`` built for inputs of ``shape`` and holding ``weights`` (numpy arrays)."""
    if not layer.built:
        layer.build(shape)
    layer.set_weights([*weights])
    return layer


def _dense(dense: net.Dense) -> keras.layers.Dense:
    return _set(keras.layers.Dense(dense.w.shape[1], activation=_ACTIVATIONS[dense.activation]),
                (None, dense.w.shape[0]), (dense.w, dense.b))


def _layer_norm(norm: net.Norm, into: keras.layers.LayerNormalization | None = None):
    layer = into if into is not None else keras.layers.LayerNormalization(epsilon=norm.eps)
    return _set(layer, (None, norm.scale.shape[0]), (norm.scale, norm.bias))


def _read_norm(layer, eps: float) -> net.Norm:
    return net.Norm(*layer.get_weights(), eps)


class Branch(keras.layers.Layer):
    """The block's dense layers, each with its activation."""

    def __init__(self, denses, **kwargs):
        super().__init__(**kwargs)
        self.denses = [_dense(d) for d in denses]
        self.built = True

    def call(self, x):
        for dense in self.denses:
            x = dense(x)
        return x


class Attention(keras.layers.Layer):
    """:class:`~aion_conformance.frameworks.net.Attention` in ``keras.ops``, as its docstring
    says: scores in the compute dtype, the causal mask and the softmax in float32."""

    def __init__(self, spec: net.Attention, **kwargs):
        super().__init__(**kwargs)
        self.heads = spec.heads
        self.qkv, self.proj = _dense(spec.qkv), _dense(spec.proj)
        self.built = True

    def call(self, x):
        batch, seq, dim = ops.shape(x)
        dh = dim // self.heads

        def split(t):  # [B, T, D] -> [B, H, T, dh]: head h holds channels h*dh:(h+1)*dh
            return ops.transpose(ops.reshape(t, (batch, seq, self.heads, dh)), (0, 2, 1, 3))

        q, k, v = (split(t) for t in ops.split(self.qkv(x), 3, axis=-1))
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / math.sqrt(dh)
        seen = ops.cast(ops.tril(ops.ones((seq, seq))), "bool")
        a = ops.softmax(ops.where(seen, ops.cast(scores, "float32"), -math.inf), axis=-1)
        out = ops.matmul(ops.cast(a, v.dtype), v)
        return self.proj(ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (batch, seq, dim)))


def _branch(spec: net.Block) -> keras.layers.Layer:
    return Attention(spec.attention) if spec.attention is not None else Branch(spec.branch)


def _aion(spec: net.Aion, layer: AionResidual | None = None) -> AionResidual:
    """``layer`` (or a new AionResidual) with ``spec``'s parameters, state and trainability."""
    layer = layer if layer is not None else AionResidual(spec.alpha0, spec.beta, k_update=spec.k_update)
    if spec.state is not None:
        entries = portable.layer_entries({"alpha0": spec.alpha0, "beta": spec.beta, **spec.state})
        for name, value in entries.items():
            getattr(layer, name).assign(value)
    # A frozen variable leaves model.trainable_variables: neither differentiated nor updated.
    layer.alpha0.trainable = layer.beta.trainable = spec.trainable
    return layer


class Block(keras.layers.Layer):
    """One :class:`~aion_conformance.frameworks.net.Block`; ``call`` returns ``(out, scale)``.

    Every kind is a layer holding its norm and branch, as :class:`aion_keras.AionBlock` is
    (the ``"aion-block"`` kind holds one): the plain ``"sum"`` block the bench times
    against AION must do the same work under XLA, which a functional graph of
    LayerNormalization and Add layers does not.
    """

    def __init__(self, spec: net.Block, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        branch = _branch(spec)
        if spec.residual == "aion-block":
            self.block = AionBlock(branch, spec.dim, alpha0=spec.aion.alpha0, beta=spec.aion.beta,
                                   k_update=spec.aion.k_update)
            self.block.build((None, spec.dim))
            _layer_norm(spec.ln, self.block.norm)
            _aion(spec.aion, self.block.aion)
        else:
            self.branch = branch
            self.norm = _layer_norm(spec.ln) if spec.ln is not None else None
            self.aion = _aion(spec.aion) if spec.residual == "aion" else None
            if spec.residual == "layerscale":
                self.gamma = self.add_weight(shape=(spec.dim,), name="gamma",
                                             initializer=keras.initializers.Constant(spec.gamma))
        self.built = True  # every sub-layer is built above, from the description's weights

    def parts(self) -> tuple[Branch | Attention, keras.layers.Layer | None, AionResidual | None]:
        """The branch, LayerNorm and AionResidual, wherever the wiring keeps them."""
        if self.spec.residual == "aion-block":
            return self.block.layer, self.block.norm, self.block.aion
        return self.branch, self.norm, self.aion

    def call(self, x, training=None):
        return net.wire(self.spec, x, lambda x: self.block(x, training=training, return_stats=True),
                        lambda x: self.branch(x), lambda x: self.norm(x),
                        lambda x, y: self.aion(x, y, training=training, return_stats=True),
                        lambda y: (self.gamma * y, ops.mean(self.gamma)))


class Net(keras.Model):
    """A :class:`~aion_conformance.frameworks.net.Net`; ``call`` returns ``(out, scales)``."""

    def __init__(self, spec: net.Net, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        if spec.embed is not None:
            self.embed = _set(keras.layers.Embedding(*spec.embed.shape), (None,), (spec.embed,))
            self.pos = self.add_weight(shape=spec.pos.shape, name="pos")
            self.pos.assign(spec.pos)
        self.blocks = [Block(b) for b in spec.blocks]
        self.norm = _layer_norm(spec.final_norm) if spec.final_norm is not None else None
        self.head = _dense(spec.head) if spec.head is not None else None
        self.built = True  # every sub-layer is built above, from the description's weights

    def call(self, inputs, training=None):
        h = self.embed(inputs) + self.pos if self.spec.embed is not None else inputs
        return net.stack(h, [lambda h, b=b: b(h, training=training) for b in self.blocks], self.norm, self.head)


def build(spec: net.Net) -> Net:
    """The network, on the device Keras' backend places it."""
    return Net(spec)


def _read_block(block: Block) -> net.Block:
    spec = block.spec
    branch, norm, aion = block.parts()
    if isinstance(branch, Attention):
        denses: tuple = (replace(spec.attention, qkv=net.Dense(*branch.qkv.get_weights()),
                                 proj=net.Dense(*branch.proj.get_weights())),)
    else:
        denses = tuple(net.Dense(*layer.get_weights(), d.activation) for layer, d in zip(branch.denses, spec.branch))
    ln = None if norm is None else _read_norm(norm, spec.ln.eps)
    if aion is not None:
        state = {name: numpy_of(getattr(aion, name)) for name in STATE_SPEC}
        aion = net.Aion(float(numpy_of(aion.alpha0)), float(numpy_of(aion.beta)), spec.aion.k_update,
                        spec.aion.trainable, state)
    return replace(spec, branch=denses, ln=ln, aion=aion)


def read(model: Net) -> net.Net:
    """The trained weights and AION entries of ``model`` as a numpy description."""
    spec = model.spec
    embed = {} if spec.embed is None else {"embed": model.embed.get_weights()[0], "pos": numpy_of(model.pos)}
    return replace(spec, blocks=tuple(_read_block(b) for b in model.blocks), **embed,
                   final_norm=None if model.norm is None else _read_norm(model.norm, spec.final_norm.eps),
                   head=None if model.head is None else net.Dense(*model.head.get_weights(), spec.head.activation))
