"""One process of a multi-process run (started by tests/test_multihost.py or `titanax launch`).

Usage: python worker.py RUN_DIR MODE [--steps N] [--save-at K] [--restore]
  MODE train: DP=4 x TP=2 GPT for N steps over 8 devices in all, printing one JSON line of losses
  (process 0); each process writes its sinks under RUN_DIR/p<index>.
With TITANAX_* variables set (2 processes x 4 CPU devices) it joins a multi-process run first;
without them it runs alone (1 process x 8 devices).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from functools import partial

import titanax.mesh as tm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--save", action="store_true", help="checkpoint at the last step")
    parser.add_argument("--restore", action="store_true", help="restore the newest checkpoint")
    parser.add_argument("--hang-after", type=int, default=None, help="sleep after N steps")
    args = parser.parse_args()
    multi = "TITANAX_NUM_PROCESSES" in os.environ
    if multi:
        tm.initialize_distributed(platform="cpu", expected_global_devices=8)

    import jax
    import numpy as np
    import optax

    from titanax.exec import Engine, step_fn
    from titanax.io import CSVSink, OrbaxCheckpointer, ShardedLoader, TokenWindows
    from titanax.models import GPTConfig, gpt_init, gpt_loss
    from titanax.sharding import DP, TP, Plan, tp_rules

    index = jax.process_index()
    run_dir = pathlib.Path(args.run_dir)
    out = run_dir / f"p{index}"
    out.mkdir(parents=True, exist_ok=True)
    config = GPTConfig(vocab_size=64, seq_len=16, d_model=32, n_heads=4, n_layers=2)
    tokens = np.random.default_rng(0).integers(0, 64, 16 * 17 * 40).astype(np.int32)
    loader = ShardedLoader(TokenWindows(tokens, seq_len=16), global_batch_size=16, seed=1)
    checkpoint = OrbaxCheckpointer(run_dir / "ckpt", async_save=False)
    sink = CSVSink(out / "metrics.csv")
    engine = Engine(
        tm.MeshSpec(axes=("data", "tensor"), shape=(4, 2)),
        Plan(data_parallel=DP("data"), tensor_parallel=TP("tensor", rules=tp_rules.gpt())),
        optimizer=optax.adam(1e-2),
        checkpoint=checkpoint,
        sinks=[sink],
    )

    @step_fn
    def train_step(state, batch):  # type: ignore[no-untyped-def]
        loss, grads = state.value_and_grad(partial(gpt_loss, config=config))(state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    init = partial(gpt_init, config)
    if args.restore:
        state = engine.restore_or_create(init, jax.random.key(0), data=loader)
    else:
        state = engine.create_state(init, jax.random.key(0))
    start = int(jax.device_get(state.step))
    losses = []
    for i in range(args.steps):
        if args.hang_after is not None and i == args.hang_after:
            print(f"process {index} waiting", flush=True)
            time.sleep(3600)
        state, metrics = engine.step(train_step, state, next(loader))
        losses.append(float(metrics["loss"]))
        sink.write(start + i + 1, {"loss": losses[-1]})
    if args.save:
        engine.save(state, data=loader)
        checkpoint.wait()
    replicated = jax.sharding.NamedSharding(engine.mesh, jax.sharding.PartitionSpec())
    total = jax.jit(
        lambda p: sum(x.astype("float32").sum() for x in jax.tree.leaves(p)),
        out_shardings=replicated,
    )(state.params)
    checksum = float(total)  # replicated: every process holds it
    checkpoint.close()
    sink.close()
    if index == 0:
        print(json.dumps({"losses": losses, "step": int(jax.device_get(state.step)),
                          "checksum": checksum, "processes": jax.process_count()}))  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
