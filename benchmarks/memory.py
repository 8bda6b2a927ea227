"""Per-device memory of FSDP over 8 devices ÷ the ideal, from compiled memory analysis.

Measured: ``argument + temp`` bytes of the compiled FSDP training step per device (outputs
alias the donated state, so they add nothing). Ideal (ZeRO-3 accounting):
``(params + optimizer state + gradients) / n + batch / n + activations``, where the activations
of one device's share of the batch are the temporaries of the same step compiled on ONE device
at batch ``B / n`` minus its full gradient buffer. Goal ≤ 1.15.

What exceeds the ideal is mostly the parameters XLA keeps gathered during the step (all layers
at once rather than one at a time), which the report shows separately.

Run: ``python benchmarks/memory.py``; writes ``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import json
import os
import pathlib
from functools import partial
from typing import Any

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")

import jax
import jax.numpy as jnp
import optax

from titanax.exec import Engine, TrainState, step_fn
from titanax.mesh import MeshSpec
from titanax.models import GPTConfig, gpt_init, gpt_loss
from titanax.sharding import DP, FSDP, Plan

RESULTS = pathlib.Path(__file__).parent / "results"
CONFIG = GPTConfig(vocab_size=256, seq_len=128, d_model=128, n_heads=4, n_layers=4)
BATCH = 64


@step_fn
def train_step(state: TrainState, batch: Any) -> Any:
    loss, grads = state.value_and_grad(partial(gpt_loss, config=CONFIG))(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


def batch_spec(size: int) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (size, CONFIG.seq_len)
    return {
        "inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
        "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
    }


def leaf_bytes(tree: Any) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def main() -> None:
    n = jax.device_count()
    tx = optax.adamw(1e-3)
    init = partial(gpt_init, CONFIG)
    fsdp = Engine(
        MeshSpec(axes=("fsdp",), shape=(n,)),
        Plan(fsdp=FSDP("fsdp", min_size_bytes=0)),
        optimizer=tx,
    )
    abstract = fsdp.abstract_state(init, jax.random.key(0))
    report = fsdp.compile(train_step, batch_spec(BATCH), state=abstract)
    single = Engine(
        MeshSpec(axes=("data",), shape=(1,), devices=1),
        Plan(data_parallel=DP("data")),
        optimizer=tx,
    )
    one = single.compile(
        train_step, batch_spec(BATCH // n), state=single.abstract_state(init, jax.random.key(0))
    )
    params = leaf_bytes(abstract.params)
    opt = leaf_bytes(abstract.opt_state)
    batch = leaf_bytes(batch_spec(BATCH))
    activations = max((one.temp_bytes or 0) - params, 0)
    ideal = (2 * params + opt) / n + batch / n + activations
    measured = (report.argument_bytes or 0) + (report.temp_bytes or 0)
    row = {
        "mesh": f"fsdp={n}",
        "params_bytes": params,
        "optimizer_bytes": opt,
        "measured_argument_bytes": report.argument_bytes,
        "measured_temp_bytes": report.temp_bytes,
        "measured_bytes": measured,
        "ideal_bytes": ideal,
        "activation_bytes_per_device": activations,
        "ratio": measured / ideal,
        "gathered_params_upper_bound": params * (n - 1) / n,
    }
    print(
        f"FSDP memory per device vs ideal — GPT {CONFIG}, batch {BATCH}, jax {jax.__version__}, "
        f"{n} {jax.devices()[0].platform} devices"
    )
    print(
        "| mesh | measured (arg+temp) | ideal | ratio (goal ≤ 1.15) | params | optimizer | "
        "activations/device |"
    )
    print("|---|---|---|---|---|---|---|")

    def mib(v: float) -> str:
        return f"{v / 2**20:.2f} MiB"

    print(
        f"| fsdp={n} | {mib(measured)} | {mib(ideal)} | {row['ratio']:.3f} | {mib(params)} | "
        f"{mib(opt)} | {mib(activations)} |"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "memory.json"
    out.write_text(json.dumps({"jax": jax.__version__, "rows": [row]}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
