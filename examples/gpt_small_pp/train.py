"""The main job's GPT split into pipeline stages: data=2 × pipeline=4, 1F1B by default.

The GPT's blocks are stacked (every block leaf gets a leading ``[n_layers]`` dim) and that dim
is sharded over the ``pipeline`` axis, so each of the 4 stages holds ``n_layers / 4`` blocks.
``pipeline_value_and_grad`` runs the embedding before the pipeline, the blocks as the schedule's
table says (GPipe, 1F1B or interleaved 1F1B, all compiled into one SPMD program with
``ppermute`` between stages), and the final norm, head and loss on the last stage; the batch
is split over ``data`` around it and the gradients averaged there by XLA.

Run::

    python examples/gpt_small_pp/train.py                         # 1F1B, 8 microbatches
    python examples/gpt_small_pp/train.py --schedule gpipe
    python examples/gpt_small_pp/train.py --schedule interleaved --virtual 2 --layers 8
    titanax verify --config examples/configs/gpt_small_pp.yaml    # vs. the unpipelined model
"""

from __future__ import annotations

import argparse
import itertools
import os
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")  # 8 simulated devices (CPU backend only)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # examples/corpus.py

import jax
import optax
from corpus import stdlib_corpus

from titanax.exec import Engine, TrainState, step_fn
from titanax.io import ShardedLoader, StdoutSink, TokenWindows
from titanax.mesh import MeshSpec
from titanax.models import (
    GPTConfig,
    cross_entropy,
    gpt_apply,
    gpt_blocks,
    gpt_embed,
    gpt_head,
    gpt_init,
)
from titanax.pipeline import (
    Schedule,
    pipeline_value_and_grad,
    to_natural_order,
    to_storage_order,
)
from titanax.sharding import DP, PP, Plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedule", choices=("gpipe", "1f1b", "interleaved"), default="1f1b")
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--virtual", type=int, default=1, help="virtual stages (interleaved)")
    parser.add_argument(
        "--activations",
        choices=("recompute", "stash"),
        default="recompute",
        help="recompute each stage forward in its backward, or keep the forward's residuals",
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--max-bytes", type=int, default=4_000_000, help="stdlib bytes to read")
    args = parser.parse_args()

    # The mesh and the plan: batch over "data", the stacked blocks' layer dim over "pipeline".
    mesh = MeshSpec(axes=("data", "pipeline"), shape=(-1, args.stages)).build()
    pp = PP(
        "pipeline",
        stages=args.stages,
        microbatches=args.microbatches,
        schedule=args.schedule,
        virtual_stages=args.virtual,
    )
    plan = Plan(data_parallel=DP("data"), pipeline_parallel=pp)
    table = Schedule.from_pp(pp)  # the schedule as a tick table: who runs what, when
    print(table.describe(), end="")
    print(f"bubble: {table.bubble_fraction:.1%} of the {table.num_ticks} ticks")

    config = GPTConfig(
        vocab_size=256, seq_len=args.seq_len, d_model=args.d_model, n_heads=4, n_layers=args.layers
    )

    def init(key: jax.Array) -> Any:
        params = dict(gpt_init(config, key, stacked=True))
        # Interleaved schedules give each stage non-adjacent layer chunks: store them in the
        # order the stages own them (the identity for GPipe and 1F1B).
        params["blocks"] = to_storage_order(params["blocks"], table)
        return params

    # The three pieces of the model the pipeline needs.
    def pre(rest: Mapping[str, Any], inputs: jax.Array) -> jax.Array:
        return gpt_embed(rest, inputs, config=config)  # runs before the pipeline

    def stage(chunk: Any, x: jax.Array) -> jax.Array:
        return gpt_blocks(chunk, x, config=config)  # one chunk of stacked blocks

    def post(rest: Any, y: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
        return cross_entropy(gpt_head(rest, y, config=config), targets)  # on the last stage

    value_and_grad = pipeline_value_and_grad(
        pre, stage, post, mesh=mesh, schedule=table, axis="pipeline", activations=args.activations
    )

    @step_fn
    def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> Any:
        params = state.precision.cast_to_compute(state.params)
        loss, grads = value_and_grad(params, batch["inputs"], batch["targets"])
        return state.apply_gradients(grads=grads), {"loss": loss}

    @step_fn(kind="eval")
    def eval_step(state: TrainState, batch: Mapping[str, jax.Array]) -> Any:
        params = dict(state.params)
        params["blocks"] = to_natural_order(params["blocks"], table)  # the whole model, in order
        logits = gpt_apply(params, batch["inputs"], config=config)
        loss_sum, count = cross_entropy(logits, batch["targets"])
        return {"loss_sum": loss_sum, "count": count}

    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, b2=0.95))
    engine = Engine(mesh, plan, optimizer=optimizer, sinks=[StdoutSink(keys=("loss",))])
    state = engine.create_state(init, jax.random.key(0))
    print(engine.describe(state.params), end="")

    train, valid = stdlib_corpus(args.max_bytes)
    windows = TokenWindows(train, args.seq_len)
    loader = ShardedLoader(windows, global_batch_size=args.batch_size, seed=0)
    state = engine.fit(train_step, loader, steps=args.steps, log_every=10, progress=False)
    held_out = ShardedLoader(
        TokenWindows(valid, args.seq_len), global_batch_size=args.batch_size, seed=1, num_epochs=1
    )
    scores = engine.evaluate(eval_step, itertools.islice(held_out, 8), state=state)
    print(f"validation loss {scores['loss']:.4f} nats/byte after {int(state.step)} steps")


if __name__ == "__main__":
    main()
