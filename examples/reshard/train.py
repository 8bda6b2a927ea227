"""Train on TP=2, resume on TP=4 from the same checkpoint directory: the layouts change, the loss
curve does not.

Phase 1 trains the main job's GPT on data=4 × tensor=2 and checkpoints it (Orbax; the data
loader's position goes into the metadata). Phase 2 builds a new Engine on data=2 × tensor=4 and
calls ``restore_or_create`` on the same directory: the restore target is the abstract state of
the *new* layout, so every array loads straight into its new shards — nothing is gathered on
one device. The script prints the per-device shard of a few parameters under both layouts, and
compares the resumed losses with an uninterrupted TP=2 run of the same length.

Run::

    python examples/reshard/train.py
    # the same with the CLI, one run directory:
    titanax run tp --config examples/configs/reshard.yaml                      # TP=2
    titanax run tp --config examples/configs/reshard.yaml \\
        --set run.steps=60 --set mesh.shape=[2,4]                            # resumes on TP=4
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Mapping
from functools import partial
from typing import Any

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")  # 8 simulated devices (CPU backend only)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # examples/corpus.py

import jax
import optax
from corpus import stdlib_corpus

from titanax.exec import Engine, TrainState, step_fn
from titanax.io import OrbaxCheckpointer, ShardedLoader, TokenWindows
from titanax.mesh import MeshSpec
from titanax.models import GPTConfig, cross_entropy, gpt_apply, gpt_init
from titanax.sharding import DP, TP, Plan, path_str, tp_rules

SHOWN = ("embed/embedding", "blocks/0/attn/q/kernel", "blocks/0/mlp/down/kernel", "ln_f/scale")


class Losses:
    """A metric sink keeping the logged losses by step."""

    def __init__(self) -> None:
        self.by_step: dict[int, float] = {}

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        self.by_step[step] = float(metrics["loss"])

    def close(self) -> None:
        pass


def layouts(params: Any) -> dict[str, str]:
    """``path -> "spec, shard shape per device"`` of the parameters in ``SHOWN``."""
    out = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = path_str(key_path)
        if path in SHOWN:
            shard = leaf.sharding.shard_shape(leaf.shape)
            out[path] = f"{leaf.sharding.spec}, shard {shard} of {leaf.shape}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="steps before and after the switch")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-bytes", type=int, default=4_000_000, help="stdlib bytes to read")
    parser.add_argument("--checkpoints", type=pathlib.Path, default=None, help="default: temp")
    args = parser.parse_args()

    config = GPTConfig(
        vocab_size=256, seq_len=args.seq_len, d_model=args.d_model, n_heads=4, n_layers=args.layers
    )
    init_fn = partial(gpt_init, config)
    windows = TokenWindows(stdlib_corpus(args.max_bytes)[0], args.seq_len)
    optimizer = optax.adamw(3e-3, b2=0.95)  # the same optimizer on both sides (checked)

    @step_fn
    def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> Any:
        def loss_fn(params: Any, b: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
            return cross_entropy(gpt_apply(params, b["inputs"], config=config), b["targets"])

        loss, grads = state.value_and_grad(loss_fn)(state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    def phase(tensor: int, directory: pathlib.Path, steps: int) -> tuple[Losses, Any]:
        """Restores the newest checkpoint in ``directory`` onto data × tensor (or starts), trains
        to ``steps`` and saves."""
        mesh = MeshSpec(axes=("data", "tensor"), shape=(-1, tensor))
        plan = Plan(data_parallel=DP("data"), tensor_parallel=TP("tensor", rules=tp_rules.gpt()))
        losses = Losses()
        checkpoint = OrbaxCheckpointer(directory, keep=2)
        engine = Engine(mesh, plan, optimizer=optimizer, checkpoint=checkpoint, sinks=[losses])
        loader = ShardedLoader(windows, global_batch_size=args.batch_size, seed=0)
        state = engine.restore_or_create(init_fn, jax.random.key(0), data=loader)
        start = int(state.step)
        sizes = dict(engine.mesh.shape)
        print(f"data={sizes['data']} × tensor={sizes['tensor']}: "
              + (f"resumed at step {start}" if start else "fresh start"))  # fmt: skip
        for path, text in layouts(state.params).items():
            print(f"  {path:26} {text}")
        state = engine.fit(train_step, loader, steps=steps, log_every=1, progress=False)
        checkpoint.close()
        return losses, state

    root = args.checkpoints or pathlib.Path(tempfile.mkdtemp(prefix="titanax_reshard_"))
    first, _ = phase(2, root / "run", args.steps)
    resumed, _ = phase(4, root / "run", 2 * args.steps)  # the same directory, now TP=4
    print("uninterrupted reference: data=4 × tensor=2 for all the steps")
    straight, _ = phase(2, root / "straight", 2 * args.steps)
    if args.checkpoints is None:
        shutil.rmtree(root, ignore_errors=True)

    curve = {**first.by_step, **resumed.by_step}
    worst = max(abs(curve[s] - straight.by_step[s]) / straight.by_step[s] for s in curve)
    step = args.steps
    print(f"loss at step {step} (TP=2) {curve[step]:.4f}, step {step + 1} (TP=4, resumed) "
          f"{curve[step + 1]:.4f}, step {2 * step} {curve[2 * step]:.4f}")  # fmt: skip
    print(f"largest relative loss difference, resumed on TP=4 vs uninterrupted TP=2, over "
          f"{len(curve)} steps: {worst:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
