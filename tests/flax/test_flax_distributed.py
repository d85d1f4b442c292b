"""Data parallelism on 2 host devices: XLA_FLAGS must be set before jax starts, so it runs
in a process of its own."""

from pathlib import Path

import pytest

from aion_conformance import registry


@pytest.mark.distributed
def test_sharded_jit_and_shard_map_equal_single_device():
    proc = registry.spawn([str(Path(__file__).with_name("sharded_equivalence.py"))], timeout=300,
                          env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"})
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for flavour in ("nnx", "linen"):
        assert f"{flavour} jit, batch sharded: matches single device" in proc.stdout
        assert f"{flavour} shard_map axis_name: matches single device" in proc.stdout
        assert f"{flavour} jit, batch sharded, sync_ratio=False: matches single device" in proc.stdout
        assert f"{flavour} shard_map axis_name, sync_ratio=False, per shard: matches single device" in proc.stdout
