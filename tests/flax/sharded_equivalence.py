"""Run with 2 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=2); see
test_flax_distributed.py. Checks that a data-parallel AION step equals the single-device one:

* plain ``jit`` with the batch sharded over a mesh: no ``axis_name``, the ratio is global
  (with ``sync_ratio=False`` too: one program over the global batch has no per-shard ratio);
* ``shard_map`` with ``axis_name``: the ratio is ``pmean``-ed over the axis;
* ``shard_map`` with ``axis_name`` and ``sync_ratio=False``: nothing is reduced over the axis,
  each shard equals one device holding that shard alone;

for NNX and Linen, comparing outputs, new state and gradients (params and input).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import aion_flax
import aion_flax.linen as aion_linen

DIM, BATCH = 16, 8


def nnx_step(axis_name, sync_ratio=True):
    model = aion_flax.AionBlock(nnx.Linear(DIM, DIM, rngs=nnx.Rngs(0)), DIM, beta=0.5, ema_gamma=0.5,
                                sync_ratio=sync_ratio, axis_name=axis_name)
    graphdef, params, stats = nnx.split(model, nnx.Param, aion_flax.AionStat)

    def forward(params, stats, x):
        model = nnx.merge(graphdef, params, stats, copy=True)
        return model(x), nnx.state(model, aion_flax.AionStat)
    return forward, params, stats


def linen_step(axis_name, sync_ratio=True):
    module = aion_linen.AionBlock(nn.Dense(DIM), beta=0.5, ema_gamma=0.5, sync_ratio=sync_ratio,
                                  axis_name=axis_name)
    variables = module.init(jax.random.key(0), jnp.zeros((BATCH, DIM), jnp.float32), deterministic=True)

    def forward(params, stats, x):
        out, upd = module.apply({"params": params, "aion_stats": stats}, x, deterministic=False,
                                mutable=["aion_stats"])
        return out, upd["aion_stats"]
    return forward, variables["params"], variables["aion_stats"]


def value_and_grads(forward, params, stats, x, cot):
    def loss(params, x):
        out, new_stats = forward(params, stats, x)
        return jnp.sum(out * cot), (out, new_stats)
    (_, (out, new_stats)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    return jax.tree.map(np.asarray, {"out": out, "state": new_stats, "grads": grads})


def check(name, got, want):
    leaves = jax.tree_util.tree_leaves_with_path(want)
    for (path, w), g in zip(leaves, jax.tree.leaves(got)):
        scale = float(np.max(np.abs(w))) if w.size else 0.0
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * scale,
                                   err_msg=f"{name} {jax.tree_util.keystr(path)}")
    worst = max(float(np.max(np.abs(np.asarray(g, np.float64) - w))) for (_, w), g in
                zip(leaves, jax.tree.leaves(got)))
    print(f"{name}: matches single device (max abs diff {worst:.2e})")


def main():
    assert jax.device_count() == 2, jax.devices()
    # Auto axes: the classic GSPMD data parallelism, where XLA inserts the collectives.
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((BATCH, DIM)).astype(np.float32))
    cot = jnp.asarray(rng.standard_normal((BATCH, DIM)).astype(np.float32))
    for flavour, make in (("nnx", nnx_step), ("linen", linen_step)):
        forward, params, stats = make(None)
        single = value_and_grads(forward, params, stats, x, cot)

        batch_sharding = NamedSharding(mesh, P("data"))
        xs, cots = jax.device_put(x, batch_sharding), jax.device_put(cot, batch_sharding)
        sharded = value_and_grads(forward, params, stats, xs, cots)
        assert len(xs.sharding.device_set) == 2
        check(f"{flavour} jit, batch sharded", sharded, single)

        forward_axis, params, stats = make("data")
        mapped = jax.shard_map(forward_axis, mesh=mesh, in_specs=(P(), P(), P("data")),
                               out_specs=(P("data"), P()))
        check(f"{flavour} shard_map axis_name", value_and_grads(mapped, params, stats, xs, cots), single)
        # Without axis_name each shard would use its own half-batch ratio: a different state.
        def per_shard_forward(params, stats, x):
            out, new_stats = forward(params, stats, x)
            return out, jax.tree.map(lambda a: a[None], new_stats)  # one state per shard

        local = jax.shard_map(per_shard_forward, mesh=mesh, in_specs=(P(), P(), P("data")),
                              out_specs=(P("data"), P("data")))
        per_shard = value_and_grads(local, params, stats, xs, cots)
        ema = lambda tree: [v for p, v in jax.tree_util.tree_leaves_with_path(tree)
                            if "ratio_ema" in jax.tree_util.keystr(p)][0]
        assert not np.allclose(ema(per_shard["state"]), ema(single["state"])), \
            "half-batch ratios should differ from the global one"

        # sync_ratio=False, plain jit over the sharded batch: still the global ratio.
        forward_local, params, stats = make(None, sync_ratio=False)
        check(f"{flavour} jit, batch sharded, sync_ratio=False",
              value_and_grads(forward_local, params, stats, xs, cots), single)

        # sync_ratio=False under shard_map with axis_name: each shard on its own, no collective.
        forward_local, params, stats = make("data", sync_ratio=False)

        def local_forward(params, stats, x):
            out, new_stats = forward_local(params, stats, x)
            return out, jax.tree.map(lambda a: a[None], new_stats)  # the shards' states differ

        local = jax.shard_map(local_forward, mesh=mesh, in_specs=(P(), P(), P("data")),
                              out_specs=(P("data"), P("data")))
        synced = jax.shard_map(forward_axis, mesh=mesh, in_specs=(P(), P(), P("data")),
                               out_specs=(P("data"), P()))
        assert "psum" in str(jax.make_jaxpr(synced)(params, stats, xs)), "positive control: pmean is a psum"
        assert "psum" not in str(jax.make_jaxpr(local)(params, stats, xs)), "sync_ratio=False reduced over the axis"
        got = value_and_grads(local, params, stats, xs, cots)
        half = BATCH // 2
        shards = [value_and_grads(forward, params, stats, x[i * half:(i + 1) * half], cot[i * half:(i + 1) * half])
                  for i in range(2)]
        want = {"out": np.concatenate([s["out"] for s in shards]),
                "state": jax.tree.map(lambda *a: np.stack(a), *(s["state"] for s in shards)),
                # replicated params: their gradient is summed over the shards; x's is per row
                "grads": (jax.tree.map(lambda a, b: a + b, shards[0]["grads"][0], shards[1]["grads"][0]),
                          np.concatenate([s["grads"][1] for s in shards]))}
        check(f"{flavour} shard_map axis_name, sync_ratio=False, per shard", got, want)
        local_ema = ema(got["state"])
        assert abs(float(local_ema[0] - local_ema[1])) > 1e-3, "the shards' own ratios should differ"
    print("OK")


if __name__ == "__main__":
    main()
