"""The quickstarts train, match one device, and resume from a checkpoint."""

from __future__ import annotations

import pathlib
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from titanax.models import GPTConfig, MLPConfig, gpt_init, gpt_loss, mlp_apply, mlp_init
from titanax.quickstart import QuickstartError, simple_data_parallel, simple_tensor_parallel

MLP = MLPConfig(sizes=(4, 32, 1), activation="tanh")


def regression_data(n: int = 512) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (n, 4)).astype(np.float32)
    return {"x": x, "y": np.sin(x.sum(-1, keepdims=True)).astype(np.float32)}


def mse(params: Any, batch: Any) -> jax.Array:
    return jnp.mean((mlp_apply(params, batch["x"], config=MLP) - batch["y"]) ** 2)


def test_simple_data_parallel_learns(tmp_path: pathlib.Path) -> None:
    result = simple_data_parallel(
        partial(mlp_init, MLP),
        mse,
        regression_data(),
        batch_size=64,
        steps=40,
        learning_rate=1e-2,
        log_every=10,
        checkpoint_dir=str(tmp_path / "ckpt"),
    )
    losses = [row["loss"] for row in result.history]
    assert [row["step"] for row in result.history] == [10, 20, 30, 40]
    assert losses[-1] < 0.5 * losses[0]
    assert int(result.state.step) == 40
    assert dict(result.engine.mesh.shape) == {"data": 8}
    # running again with more steps resumes from step 40
    again = simple_data_parallel(
        partial(mlp_init, MLP),
        mse,
        regression_data(),
        batch_size=64,
        steps=50,
        learning_rate=1e-2,
        log_every=10,
        checkpoint_dir=str(tmp_path / "ckpt"),
    )
    assert [row["step"] for row in again.history] == [50]


def test_simple_tensor_parallel_gpt() -> None:
    config = GPTConfig(vocab_size=32, seq_len=8, d_model=16, n_heads=2, n_layers=1)
    rng = np.random.default_rng(1)
    tokens = (np.arange(9)[None, :] + rng.integers(0, 32, (64, 1))) % 32  # learnable: +1 patterns
    data = {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32)}
    result = simple_tensor_parallel(
        partial(gpt_init, config),
        partial(gpt_loss, config=config),
        data,
        batch_size=16,
        steps=30,
        learning_rate=1e-2,
        log_every=10,
    )
    assert dict(result.engine.mesh.shape) == {"data": 4, "tensor": 2}
    q = result.state.params["blocks"][0]["attn"]["q"]["kernel"]
    assert q.sharding.spec[-1] == "tensor"
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_bad_data() -> None:
    with pytest.raises(QuickstartError, match=r"batch_size= \(the global batch size\) is required"):
        simple_data_parallel(partial(mlp_init, MLP), mse, regression_data(), steps=1)
    with pytest.raises(QuickstartError, match=r"got int"):
        simple_data_parallel(partial(mlp_init, MLP), mse, 3, steps=1)
    with pytest.raises(QuickstartError, match=r"got str"):
        simple_data_parallel(partial(mlp_init, MLP), mse, "hello", steps=1)
    with pytest.raises(QuickstartError, match=r"no tensor-parallel rule matched any parameter"):
        simple_tensor_parallel(
            partial(mlp_init, MLP), mse, regression_data(), batch_size=64, steps=1
        )
