"""A network's variables as both Flax kits (NNX and Linen) name them, and what reads them.

Both kits build the same module tree and name it as Linen names a module's children (the
NNX modules take the same attribute names), so one flat dict of ``"path/name"`` keys
holds either kit's variables::

    embed/embedding, pos                         (with net.embed)
    blocks_<i>/norm/{scale,bias}                 a block's LayerNorm
    blocks_<i>/layer/dense_<j>/{kernel,bias}     its branch; kernels [in, out], as net's
    blocks_<i>/layer/{qkv,proj}/{kernel,bias}    or its attention branch
    blocks_<i>/aion/{alpha0,beta,ratio_ema,step_count,nonfinite_count}
    blocks_<i>/gamma                             LayerScale's
    norm/{scale,bias}, head/{kernel,bias}        final LayerNorm and head

An ``"aion-block"`` block is AionBlock itself, whose children are ``norm``, ``layer`` and
``aion``; every other block holds the same names. NNX keeps AION's state beside the
parameters, Linen in the ``"aion_stats"`` collection: the flat dict has both.
:func:`variables` lays out a :class:`~aion_conformance.frameworks.net.Net`'s weights,
:func:`network` reads them back, :func:`trainable` says what the optimizer updates.
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass, replace
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from aion_conformance.frameworks import net
from aion_core import STATE_SPEC, portable

#: A dense layer's activation by :class:`~aion_conformance.frameworks.net.Dense` name
#: (GELU exact, with erf, as torch's default).
ACTIVATIONS = {None: lambda x: x, "tanh": jnp.tanh, "gelu": partial(jax.nn.gelu, approximate=False)}


def flatten(tree) -> dict:
    """A nested dict of variables as the flat ``{"a/b/c": leaf}`` dict."""
    return flatten_dict(tree, sep="/")


def unflatten(flat: dict) -> dict:
    """The nested dict a module's variables are given as (NNX ``merge``, Linen ``apply``)."""
    return unflatten_dict(flat, sep="/")


def hollow(spec):
    """``spec`` with its arrays replaced by their shapes and dtypes and no AION state: the
    structure alone. Modules keep it as an attribute: Linen compares and hashes module
    attributes, and NNX keeps non-variable attributes in its (static) graph definition."""
    if isinstance(spec, np.ndarray):
        return jax.ShapeDtypeStruct(spec.shape, spec.dtype)
    if isinstance(spec, net.Aion):
        return replace(spec, state=None)
    if is_dataclass(spec):
        return replace(spec, **{f.name: hollow(getattr(spec, f.name)) for f in fields(spec)})
    return tuple(hollow(v) for v in spec) if isinstance(spec, tuple) else spec


def _dense(dense: net.Dense) -> dict:
    return {"kernel": dense.w, "bias": dense.b}


def _norm(norm: net.Norm) -> dict:
    return {"scale": norm.scale, "bias": norm.bias}


def _block(block: net.Block) -> dict:
    att = block.attention
    tree = {"layer": {f"dense_{j}": _dense(d) for j, d in enumerate(block.branch)} if att is None else
            {"qkv": _dense(att.qkv), "proj": _dense(att.proj)}}
    if block.ln is not None:
        tree["norm"] = _norm(block.ln)
    if block.aion is not None:
        fresh = {name: spec[2] for name, spec in STATE_SPEC.items()}
        tree["aion"] = portable.layer_entries({**fresh, **(block.aion.state or {}),
                                               "alpha0": block.aion.alpha0, "beta": block.aion.beta})
    if block.residual == "layerscale":
        tree["gamma"] = np.full(block.dim, block.gamma, np.float32)
    return tree


def variables(spec: net.Net) -> dict[str, np.ndarray]:
    """Every variable of ``spec``'s network, flat, from its numpy weights and AION entries."""
    tree = {f"blocks_{i}": _block(b) for i, b in enumerate(spec.blocks)}
    if spec.embed is not None:
        tree.update(embed={"embedding": spec.embed}, pos=spec.pos)
    if spec.final_norm is not None:
        tree["norm"] = _norm(spec.final_norm)
    if spec.head is not None:
        tree["head"] = _dense(spec.head)
    return flatten(tree)


def check(values: dict, kit: dict) -> None:
    """Refuse a layout that is not the kit's: ``values`` (of :func:`variables`) must name
    the kit's module variables (``kit``: flat, any leaves with ``shape`` and ``dtype``),
    each with its shape and dtype, and no more."""
    def signature(flat):
        return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flat.items()}

    want, got = signature(kit), signature(values)
    if want != got:
        wrong = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
        raise RuntimeError(f"the network's weights do not lay out the module's variables: missing "
                           f"{sorted(want.keys() - got.keys())}, unknown {sorted(got.keys() - want.keys())}, "
                           f"other shape or dtype {wrong}")


def trainable(spec: net.Net, key: str) -> bool:
    """Whether the optimizer updates variable ``key``: not AION's running state, nor the
    ``alpha0`` and ``beta`` of a layer that is not trainable (the fixed-scale baseline)."""
    *path, name = key.split("/")
    if path[-1:] != ["aion"]:
        return True
    return name in portable.PARAM_NAMES and spec.blocks[int(path[0].removeprefix("blocks_"))].aion.trainable


def is_state(key: str) -> bool:
    """Whether ``key`` is AION running state (Linen's ``"aion_stats"``; NNX's ``AionStat``)."""
    return key.rsplit("/", 1)[-1] in STATE_SPEC


def network(spec: net.Net, flat: dict) -> net.Net:
    """``spec`` with the weights and AION entries of the flat variables ``flat`` (any arrays)."""
    tree = unflatten(flat)

    def array(a):
        return np.asarray(a)

    def dense(t, d: net.Dense):
        return net.Dense(array(t["kernel"]), array(t["bias"]), d.activation)

    def norm(t, n: net.Norm):
        return net.Norm(array(t["scale"]), array(t["bias"]), n.eps)

    blocks = []
    for i, b in enumerate(spec.blocks):
        t = tree[f"blocks_{i}"]
        aion = b.aion
        if aion is not None:
            state = {k: array(v) for k, v in t["aion"].items()}
            aion = replace(aion, alpha0=float(state.pop("alpha0")), beta=float(state.pop("beta")), state=state)
        att, layer = b.attention, t["layer"]
        branch = (tuple(dense(layer[f"dense_{j}"], d) for j, d in enumerate(b.branch)) if att is None else
                  (replace(att, qkv=dense(layer["qkv"], att.qkv), proj=dense(layer["proj"], att.proj)),))
        blocks.append(replace(b, branch=branch,
                              ln=None if b.ln is None else norm(t["norm"], b.ln), aion=aion))
    return replace(spec, blocks=tuple(blocks),
                   embed=None if spec.embed is None else array(tree["embed"]["embedding"]),
                   pos=None if spec.pos is None else array(tree["pos"]),
                   final_norm=None if spec.final_norm is None else norm(tree["norm"], spec.final_norm),
                   head=None if spec.head is None else dense(tree["head"], spec.head))


def attention(x, qkv, proj, heads: int):
    """:class:`~aion_conformance.frameworks.net.Attention` of ``x`` ``[B, T, D]`` from a
    kit's two dense layers, as its docstring says: scores in the compute dtype, the causal
    mask and the softmax in float32."""
    batch, seq, dim = x.shape
    dh = dim // heads

    def split(t):  # [B, T, D] -> [B, H, T, dh]: head h holds channels h*dh:(h+1)*dh
        return t.reshape(batch, seq, heads, dh).transpose(0, 2, 1, 3)

    q, k, v = (split(t) for t in jnp.split(qkv(x), 3, axis=-1))
    scores = (q @ k.swapaxes(-1, -2)) / math.sqrt(dh)
    seen = jnp.tril(jnp.ones((seq, seq), bool))
    a = jax.nn.softmax(jnp.where(seen, scores.astype(jnp.float32), -jnp.inf), axis=-1).astype(v.dtype)
    return proj((a @ v).transpose(0, 2, 1, 3).reshape(batch, seq, dim))


def forward(spec: net.Net, inputs, embed, block, norm, head):
    """The network's forward in :class:`~aion_conformance.frameworks.net.Net`'s order, from
    a kit's parts: ``embed(tokens)`` (position embedding added), ``block(i, h) -> (h,
    scale)``, ``norm(h)``, ``head(h)``. Returns ``(out, scales)``, the scales of the blocks
    that have one."""
    h = embed(inputs) if spec.embed is not None else inputs
    scales = []
    for i in range(len(spec.blocks)):
        h, scale = block(i, h)
        if scale is not None:
            scales.append(scale)
    if spec.final_norm is not None:
        h = norm(h)
    return (head(h) if spec.head is not None else h), scales
