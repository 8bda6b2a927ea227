"""The main job with the Python API: a byte-level GPT on this Python's standard library sources,
data parallel × tensor parallel (data=4 × tensor=2) over 8 simulated CPU devices.

``titanax run tp --config examples/configs/gpt_small_tp.yaml`` builds exactly these pieces from
YAML; this script writes them out: the mesh, the plan (Megatron rules for the GPT's parameter
names), the Engine (AdamW with warmup + cosine decay and gradient clipping, Orbax checkpoints,
metric sinks), a step written for one device in the global view, the data loader, and ``fit``
with periodic evaluation. Run it again with the same ``--run-dir`` to resume.

Run::

    python examples/gpt_small_tp/train.py                        # 300 steps, a few minutes
    python examples/gpt_small_tp/train.py --steps 20 --max-bytes 2000000   # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import os
import pathlib
import sys
from collections.abc import Mapping
from functools import partial
from typing import Any

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")  # 8 simulated devices (CPU backend only)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # examples/corpus.py

import jax
import numpy as np
import optax
from corpus import stdlib_corpus, unigram_entropy

from titanax.exec import Engine, TrainState, step_fn
from titanax.io import JSONLSink, OrbaxCheckpointer, ShardedLoader, StdoutSink, TokenWindows
from titanax.mesh import MeshSpec
from titanax.models import GPTConfig, cross_entropy, gpt_apply, gpt_flops_per_token, gpt_init
from titanax.sharding import DP, TP, Plan, tp_rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--run-dir", type=pathlib.Path, default=pathlib.Path("runs/gpt_tp_py"))
    parser.add_argument("--max-bytes", type=int, default=None, help="use fewer stdlib files")
    parser.add_argument("--tensor", type=int, default=2, help="tensor-parallel degree")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-batches", type=int, default=16)
    args = parser.parse_args()

    # 1. The mesh and the plan: batch over "data", Megatron layout over "tensor".
    mesh = MeshSpec(axes=("data", "tensor"), shape=(-1, args.tensor))
    plan = Plan(
        data_parallel=DP("data"),
        tensor_parallel=TP("tensor", rules=tp_rules.gpt("tensor")),
    )

    # 2. The model: plain single-device JAX functions; the plan lays its parameters out.
    config = GPTConfig(
        vocab_size=256,
        seq_len=args.seq_len,
        d_model=args.d_model,
        n_heads=4,
        n_layers=args.layers,
    )
    init_fn = partial(gpt_init, config)

    # 3. The Engine: optimizer, checkpoints (resume + reshard), metric sinks.
    warmup = min(30, max(1, args.steps // 10))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=3e-3,
        warmup_steps=warmup,
        decay_steps=max(args.steps, warmup + 1),
        end_value=3e-4,
    )
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=0.1),
    )
    checkpoint = OrbaxCheckpointer(args.run_dir / "checkpoints", keep=2)
    engine = Engine(
        mesh,
        plan,
        optimizer=optimizer,
        checkpoint=checkpoint,
        sinks=[JSONLSink(args.run_dir / "metrics.jsonl"), StdoutSink(keys=("loss", "eval_loss"))],
    )
    print(engine.describe(engine.abstract_state(init_fn, jax.random.key(0)).params), end="")

    # 4. The steps, written for one device (global view): XLA inserts the collectives the
    #    layouts need — the gradient all-reduce over "data", the row-parallel sums over "tensor".
    def loss_fn(params: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        return cross_entropy(gpt_apply(params, batch["inputs"], config=config), batch["targets"])

    @step_fn
    def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> Any:
        loss, grads = state.value_and_grad(loss_fn)(state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    @step_fn(kind="eval")
    def eval_step(state: TrainState, batch: Mapping[str, jax.Array]) -> Any:
        loss_sum, count = loss_fn(state.params, batch)
        return {"loss_sum": loss_sum, "count": count}

    # 5. The data: 128-byte windows; the loader's position is saved with every checkpoint.
    train, valid = stdlib_corpus(args.max_bytes)
    print(
        f"corpus: {len(train):,} train / {len(valid):,} validation bytes, unigram entropy "
        f"{unigram_entropy(np.concatenate([train, valid])):.4f} nats/byte"
    )
    batch = args.batch_size
    loader = ShardedLoader(TokenWindows(train, args.seq_len), global_batch_size=batch, seed=0)

    def eval_data() -> Any:
        windows = TokenWindows(valid, args.seq_len)
        loader = ShardedLoader(windows, global_batch_size=batch, seed=1, num_epochs=1)
        return itertools.islice(loader, args.eval_batches)

    # 6. Train (or resume from the newest checkpoint in --run-dir), evaluating as it goes.
    state = engine.restore_or_create(init_fn, jax.random.key(0), data=loader)
    start = int(state.step)
    print("resuming from step" if start else "starting at step", start)
    state = engine.fit(
        train_step,
        loader,
        steps=args.steps,
        log_every=10,
        eval_step=eval_step,
        eval_data=eval_data,
        eval_every=args.eval_every,
        checkpoint_every=100,
        flops_per_token=gpt_flops_per_token(config),
        progress=False,
    )
    scores = engine.evaluate(eval_step, eval_data(), state=state)
    checkpoint.close()
    print(f"validation loss {scores['loss']:.4f} nats/byte at step {int(state.step)}")


if __name__ == "__main__":
    main()
