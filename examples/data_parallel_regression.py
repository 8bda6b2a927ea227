"""Data-parallel training in the per-device view with explicit collectives (titanax.mesh only).

A two-layer MLP learns y = sin(3x) on 8 simulated CPU devices: the batch is sharded over the
"data" axis, each device computes gradients on its shard inside ``jax.shard_map``, and the
gradients are averaged with ``collectives.pmean`` — the reduction is written out, nothing is
implicit. The same training on one device gives the same losses, which the script checks.

Run: ``python examples/data_parallel_regression.py``
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")  # simulate 8 devices on a laptop

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from titanax.mesh import MeshSpec, collectives

Params = dict[str, jax.Array]


def init(key: jax.Array, width: int = 64) -> Params:
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (1, width)) * 1.0,
        "b1": jnp.zeros(width),
        "w2": jax.random.normal(k2, (width, 1)) / jnp.sqrt(width),
        "b2": jnp.zeros(1),
    }


def loss_fn(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def make_step(mesh: jax.sharding.Mesh, lr: float):  # type: ignore[no-untyped-def]
    def per_device(params: Params, x: jax.Array, y: jax.Array) -> tuple[Params, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        grads = collectives.pmean(grads, "data")  # the data-parallel all-reduce, explicit
        loss = collectives.pmean(loss, "data")
        return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss

    # check_vma=False: gradients of replicated parameters stay per-device (pmap semantics), so
    # the reduction above is the only one. With check_vma=True JAX would psum them implicitly.
    step = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), P("data"), P("data")),
        out_specs=(P(), P()),
        check_vma=False,
    )
    return jax.jit(step, donate_argnums=0)


def train(devices: int, steps: int = 200) -> list[float]:
    spec = MeshSpec(axes=("data",), shape=(-1,), devices=devices)
    mesh = spec.build()
    print(spec.describe(mesh))
    rng = np.random.default_rng(0)
    params = jax.device_put(init(jax.random.key(0)), NamedSharding(mesh, P()))
    step = make_step(mesh, lr=0.1)
    losses = []
    batch = NamedSharding(mesh, P("data"))
    for i in range(steps):
        x = rng.uniform(-1, 1, size=(256, 1)).astype(np.float32)
        y = np.sin(3 * x)
        params, loss = step(params, jax.device_put(x, batch), jax.device_put(y, batch))
        losses.append(float(loss))  # fetching each loss also bounds the steps in flight
        if i % 50 == 0 or i == steps - 1:
            print(f"devices={devices} step {i:4d} loss {losses[-1]:.5f}")
    return losses


def main() -> None:
    parallel = train(devices=jax.device_count())
    single = train(devices=1)
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(parallel, single, strict=True))
    print(f"final loss {parallel[-1]:.5f} on {jax.device_count()} devices, {single[-1]:.5f} on 1")
    print(f"largest relative loss difference over {len(single)} steps: {worst:.2e}")
    if worst > 1e-4 or parallel[-1] > 0.25 * parallel[0]:
        raise SystemExit("data-parallel run diverged from the 1-device run or did not learn")


if __name__ == "__main__":
    main()
