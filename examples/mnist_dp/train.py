"""Digit classification, data parallel in the per-device view, with the gradient pmean written out.

A CNN from ``titanax.models`` trains on 8 simulated CPU devices. The step is written for ONE
device's shard of the batch (``step_fn(view="per_device")``, run by ``jax.shard_map`` over the
``data`` axis): it computes that shard's loss and gradients, and ``collectives.pmean`` averages
the gradients over the axis — the one reduction of data parallelism, explicit and checked
against the mesh. With ``--compare`` the same training runs on one device too, from the same
parameters and batches, and the script prints how far the two loss curves are apart.

Data: scikit-learn's bundled 8×8 digits by default (1,797 images; 360 held out for the test),
or the four standard MNIST IDX files (``train-images-idx3-ubyte`` ..., optionally ``.gz``) in
the directory given with ``--data``.

Run::

    python examples/mnist_dp/train.py                  # digits, 8 devices: ~98% test accuracy
    python examples/mnist_dp/train.py --compare        # and on 1 device: the same losses
    python examples/mnist_dp/train.py --data ~/mnist --model mlp --steps 2000
"""

from __future__ import annotations

import argparse
import gzip
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")  # 8 simulated devices (CPU backend only)

import jax
import jax.numpy as jnp
import numpy as np
import optax

from titanax.exec import Engine, TrainState, step_fn
from titanax.io import ShardedLoader
from titanax.mesh import MeshSpec, collectives
from titanax.models import (
    CNNConfig,
    MLPConfig,
    cnn_apply,
    cnn_init,
    cross_entropy,
    mlp_apply,
    mlp_init,
)
from titanax.sharding import DP, Plan

Data = dict[str, np.ndarray]


# -- data ---------------------------------------------------------------------------------------


def load_digits(test_size: int = 360) -> tuple[Data, Data]:
    """scikit-learn's 8×8 digits in [0, 1], split by a fixed permutation."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    test, train = order[:test_size], order[test_size:]
    return {"x": x[train], "y": y[train]}, {"x": x[test], "y": y[test]}


def read_idx(path: pathlib.Path) -> np.ndarray:
    """An unsigned-byte IDX file (MNIST's format: magic 0x0000080N, N big-endian dims, data)."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as handle:
        raw = handle.read()
    if raw[:3] != b"\x00\x00\x08":
        raise SystemExit(f"{path} is not an unsigned-byte IDX file")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def load_mnist(directory: pathlib.Path) -> tuple[Data, Data]:
    def find(stem: str) -> pathlib.Path:
        for name in (stem, stem.replace("-idx", ".idx")):
            for suffix in ("", ".gz"):
                if (directory / f"{name}{suffix}").is_file():
                    return directory / f"{name}{suffix}"
        raise SystemExit(f"{directory} has no {stem}[.gz]")

    def split(prefix: str) -> Data:
        images = read_idx(find(f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find(f"{prefix}-labels-idx1-ubyte"))
        return {"x": images.astype(np.float32) / 255.0, "y": labels.astype(np.int32)}

    return split("train"), split("t10k")


# -- model --------------------------------------------------------------------------------------


def make_model(
    kind: str, image_size: int
) -> tuple[Callable[[jax.Array], Any], Callable[[Any, jax.Array], jax.Array]]:
    """``init(key) -> params`` and ``apply(params, x [B, H, W]) -> logits [B, 10]``."""
    if kind == "cnn":
        cnn = CNNConfig(image_size=image_size, channels=(16, 32), hidden=64, num_classes=10)
        return (
            lambda key: cnn_init(cnn, key),
            lambda params, x: cnn_apply(params, x[..., None], config=cnn),
        )
    mlp = MLPConfig(sizes=(image_size * image_size, 256, 10))
    return (
        lambda key: mlp_init(mlp, key),
        lambda params, x: mlp_apply(params, x.reshape(x.shape[0], -1), config=mlp),
    )


# -- training -----------------------------------------------------------------------------------


class LossHistory:
    """A metric sink (``write``/``close``) that keeps the logged losses."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        self.losses.append(float(metrics["loss"]))

    def close(self) -> None:
        pass


def train(
    train_data: Data,
    test_data: Data,
    *,
    model: str,
    devices: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> tuple[list[float], float]:
    """Trains on ``devices`` devices; returns the per-step losses and the test accuracy."""
    mesh = MeshSpec(axes=("data",), shape=(devices,), devices=devices)
    plan = Plan(data_parallel=DP("data"))  # parameters replicated, batch split over "data"
    history = LossHistory()
    engine = Engine(mesh, plan, optimizer=optax.adam(learning_rate), sinks=[history])
    init, apply = make_model(model, train_data["x"].shape[1])

    @step_fn(view="per_device")
    def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> Any:
        def loss_fn(params: Any, b: Mapping[str, jax.Array]) -> Any:
            return cross_entropy(apply(params, b["x"]), b["y"])  # (sum, count) of this shard

        # This device's shard: batch_size / devices images. Its mean loss and gradients ...
        loss, grads = state.value_and_grad(loss_fn)(state.params, batch)
        # ... averaged over the data axis: the data-parallel all-reduce, written out.
        grads = collectives.pmean(grads, "data")
        loss = collectives.pmean(loss, "data")
        return state.apply_gradients(grads=grads), {"loss": loss}

    @step_fn(kind="eval")
    def eval_step(state: TrainState, batch: Mapping[str, jax.Array]) -> Any:
        predicted = jnp.argmax(apply(state.params, batch["x"]), axis=-1)
        return {"correct": jnp.sum((predicted == batch["y"]) * batch["weight"])}

    loader = ShardedLoader(train_data, global_batch_size=batch_size, seed=seed)
    state = engine.create_state(init, jax.random.key(seed))
    if devices == jax.device_count():
        print(engine.describe(state.params), end="")
    state = engine.fit(train_step, loader, steps=steps, log_every=1, progress=False)

    # The whole test set, in batches that divide over the devices (padding has weight 0).
    n = len(test_data["y"])
    chunk = min(1000, -(-n // devices) * devices)
    correct = 0.0
    for start in range(0, n, chunk):
        x, y = test_data["x"][start : start + chunk], test_data["y"][start : start + chunk]
        pad = chunk - len(y)
        batch = {
            "x": np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)]),
            "y": np.concatenate([y, np.zeros(pad, np.int32)]),
            "weight": np.concatenate([np.ones(len(y)), np.zeros(pad)]).astype(np.float32),
        }
        correct += float(engine.step(eval_step, state, batch)["correct"])
    return history.losses, correct / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=pathlib.Path, help="directory of the MNIST IDX files")
    parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--devices", type=int, default=None, help="default: all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", action="store_true", help="also train on 1 device")
    args = parser.parse_args()

    train_data, test_data = load_mnist(args.data) if args.data else load_digits()
    source = f"MNIST IDX from {args.data}" if args.data else "scikit-learn digits"
    h, w = train_data["x"].shape[1:]
    print(f"data: {source}: train {len(train_data['y'])}, test {len(test_data['y'])}, {h}×{w}")
    devices = args.devices or jax.device_count()

    def run(devices: int) -> tuple[list[float], float]:
        return train(
            train_data,
            test_data,
            model=args.model,
            devices=devices,
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
        )

    losses, accuracy = run(devices)
    print(f"devices={devices}: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps")
    print(f"test accuracy: {accuracy:.2%} ({len(test_data['y'])} images)")
    if args.compare:
        single, single_accuracy = run(1)
        worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, single, strict=True))
        print(
            f"devices=1: loss {single[0]:.4f} -> {single[-1]:.4f}; "
            f"test accuracy {single_accuracy:.2%}"
        )
        print(
            f"largest relative loss difference, {devices} vs 1 device(s), over "
            f"{len(single)} steps: {worst:.2e}"
        )


if __name__ == "__main__":
    main()
