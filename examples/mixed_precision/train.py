"""bf16 mixed precision under DP × TP: fp32 master weights, bf16 compute, the same loss curve.

The main job's GPT (data=4 × tensor=2, Megatron rules) trains twice from the same parameters
and batches: with ``Precision(compute_dtype="bfloat16")`` — parameters and optimizer state stay
float32, the step casts them (and the float inputs) to bfloat16 for the forward and backward
pass, gradients come back in float32 — and in float32 throughout. The script prints the dtypes
the state holds, both loss curves and how far apart they are (bf16 keeps 8 bits of mantissa, so
expect differences around 1e-3..1e-2 relative, not 1e-6).

Run::

    python examples/mixed_precision/train.py
    titanax run tp --config examples/configs/mixed_precision.yaml    # bf16 from YAML
    titanax verify --config examples/configs/mixed_precision.yaml    # with bf16 tolerances
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Mapping
from functools import partial
from typing import Any

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")  # 8 simulated devices (CPU backend only)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # examples/corpus.py

import jax
import jax.numpy as jnp
import optax
from corpus import stdlib_corpus

from titanax.exec import Engine, Precision, TrainState, step_fn
from titanax.io import ShardedLoader, TokenWindows
from titanax.mesh import MeshSpec
from titanax.models import GPTConfig, cross_entropy, gpt_apply, gpt_init
from titanax.sharding import DP, TP, Plan, tp_rules


class Losses:
    """A metric sink keeping the logged losses."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float]] = []

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        self.rows.append((step, float(metrics["loss"])))

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-bytes", type=int, default=4_000_000, help="stdlib bytes to read")
    args = parser.parse_args()

    mesh = MeshSpec(axes=("data", "tensor"), shape=(-1, 2))
    plan = Plan(data_parallel=DP("data"), tensor_parallel=TP("tensor", rules=tp_rules.gpt()))
    config = GPTConfig(
        vocab_size=256, seq_len=args.seq_len, d_model=args.d_model, n_heads=4, n_layers=args.layers
    )
    train, _ = stdlib_corpus(args.max_bytes)

    def loss_fn(params: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        logits = gpt_apply(params, batch["inputs"], config=config)  # in the params' dtype
        return cross_entropy(logits, batch["targets"])  # the loss itself in float32

    @step_fn
    def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> Any:
        # value_and_grad casts params to precision.compute_dtype; grads come back in fp32.
        loss, grads = state.value_and_grad(loss_fn)(state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    def run(precision: Precision) -> list[tuple[int, float]]:
        losses = Losses()
        optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, b2=0.95))
        engine = Engine(mesh, plan, optimizer=optimizer, precision=precision, sinks=[losses])
        state = engine.create_state(partial(gpt_init, config), jax.random.key(0))
        kinds = {str(x.dtype) for x in jax.tree.leaves(state.params)}
        mu = {str(x.dtype) for x in jax.tree.leaves(state.opt_state) if jnp.ndim(x) > 0}
        print(f"{precision.compute_dtype} compute: parameters {sorted(kinds)}, optimizer "
              f"moments {sorted(mu)}, compute {precision.compute_dtype}")  # fmt: skip
        loader = ShardedLoader(
            TokenWindows(train, args.seq_len), global_batch_size=args.batch_size, seed=0
        )
        engine.fit(train_step, loader, steps=args.steps, log_every=args.log_every, progress=False)
        return losses.rows

    bf16 = run(Precision(compute_dtype="bfloat16"))
    fp32 = run(Precision())
    print(f"{'step':>6} {'bf16 loss':>10} {'fp32 loss':>10} {'rel diff':>9}")
    worst = 0.0
    for (step, a), (_, b) in zip(bf16, fp32, strict=True):
        diff = abs(a - b) / abs(b)
        worst = max(worst, diff)
        print(f"{step:>6} {a:>10.4f} {b:>10.4f} {diff:>9.1e}")
    print(f"largest relative loss difference bf16 vs fp32 over {len(bf16)} log points: "
          f"{worst:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
