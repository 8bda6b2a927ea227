"""A Flax NNX model, as people write it, trained under a DP × TP plan that uses Flax's names.

``model.py`` is ordinary Flax NNX (``nnx.Embed``, ``nnx.MultiHeadAttention``, ``nnx.Linear``,
``nnx.LayerNorm``) with no Titanax in it. Titanax works on the model's *state*: ``nnx.split``
separates the graph (the Python structure, kept static) from the ``nnx.Param`` arrays, a nested
dict whose paths are Flax's attribute names (``blocks/0/attn/query/kernel``). The plan lays those
paths out with ``tp_rules.flax_nnx()``: attention split over heads, the MLP's ``up``/``down``
column/row-parallel, embedding and head over the vocabulary — data=4 × tensor=2 on 8 simulated
CPU devices. The loss calls ``nnx.merge(graph, params)(tokens)``; at the end the trained state
goes back into an ``nnx.Module`` you can use as before.

Run::

    python examples/flax_nnx/train.py
    titanax run tp --config examples/configs/flax_nnx.yaml      # the same from YAML
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")  # 8 simulated devices (CPU backend only)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # examples/corpus.py

import jax
import numpy as np
import optax
from corpus import stdlib_corpus
from flax import nnx
from jax.sharding import PartitionSpec as P
from model import TinyLM

from titanax.exec import Engine, TrainState, step_fn
from titanax.io import ShardedLoader, StdoutSink, TokenWindows
from titanax.mesh import MeshSpec
from titanax.models import cross_entropy
from titanax.sharding import DP, TP, Plan, Rules, tp_rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--tensor", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-bytes", type=int, default=4_000_000, help="stdlib bytes to read")
    args = parser.parse_args()
    sizes = {
        "vocab_size": 256,
        "seq_len": args.seq_len,
        "d_model": args.d_model,
        "n_heads": 4,
        "n_layers": args.layers,
    }

    # The graph, from an abstract model (nothing allocated), and a pure init for the Engine:
    # each device materializes only its own shard of every parameter.
    graph, _ = nnx.split(nnx.eval_shape(lambda: TinyLM(**sizes, rngs=nnx.Rngs(0))), nnx.Param)

    def init(key: jax.Array) -> Any:
        _, params = nnx.split(TinyLM(**sizes, rngs=nnx.Rngs(key)), nnx.Param)
        return nnx.to_pure_dict(params)

    mesh = MeshSpec(axes=("data", "tensor"), shape=(-1, args.tensor))
    plan = Plan(
        data_parallel=DP("data"),
        tensor_parallel=TP("tensor", rules=tp_rules.flax_nnx("tensor")),
        rules=Rules({"pos_embed/embedding": P()}),  # your own rules sit on top of the preset
    )
    engine = Engine(
        mesh, plan, optimizer=optax.adamw(3e-3, b2=0.95), sinks=[StdoutSink(keys=("loss",))]
    )
    state = engine.create_state(init, jax.random.key(0))
    print(engine.describe(state.params), end="")

    def loss_fn(params: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        logits = nnx.merge(graph, params)(batch["inputs"])  # the NNX model, called as usual
        return cross_entropy(logits, batch["targets"])

    @step_fn
    def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> Any:
        loss, grads = state.value_and_grad(loss_fn)(state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    train, valid = stdlib_corpus(args.max_bytes)
    loader = ShardedLoader(
        TokenWindows(train, args.seq_len), global_batch_size=args.batch_size, seed=0
    )
    state = engine.fit(train_step, loader, steps=args.steps, log_every=20, progress=False)

    # Back to Flax: the trained parameters in an ordinary nnx.Module, on the host.
    model = nnx.merge(graph, jax.device_get(state.params))
    n = min(64, (len(valid) - 1) // args.seq_len)  # validation windows, back to back
    tokens = valid[: n * args.seq_len + 1].astype(np.int32)
    inputs, targets = (t.reshape(n, args.seq_len) for t in (tokens[:-1], tokens[1:]))
    loss_sum, count = cross_entropy(model(inputs), targets)
    print(f"trained {type(model).__name__}: validation loss {float(loss_sum / count):.4f} "
          f"nats/byte on {int(count)} bytes (plain Flax, one device)")  # fmt: skip


if __name__ == "__main__":
    main()
