"""verify_layout: passes a correct layout, fails a per-device step that forgets its reduction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from titanax.exec import ExecError, TrainState, step_fn, verify_layout
from titanax.mesh import MeshSpec, collectives
from titanax.sharding import DP, Plan


def init(key: jax.Array) -> dict[str, jax.Array]:
    return {"w": jax.random.normal(key, (8, 4)) * 0.5, "b": jnp.zeros(4)}


def loss_fn(params: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> jax.Array:
    return jnp.mean((jnp.tanh(batch["x"] @ params["w"] + params["b"]) - batch["y"]) ** 2)


@step_fn(view="per_device")
def reduced(state: TrainState, batch: Any) -> Any:
    loss, grads = state.value_and_grad(loss_fn)(state.params, batch)
    grads = collectives.pmean(grads, "data")
    return state.apply_gradients(grads=grads), {"loss": collectives.pmean(loss, "data")}


@step_fn(view="per_device")
def forgot_reduction(state: TrainState, batch: Any) -> Any:
    loss, grads = state.value_and_grad(loss_fn)(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": collectives.pmean(loss, "data")}


@step_fn(view="per_device")
def no_loss(state: TrainState, batch: Any) -> Any:
    return state, {"other": jnp.zeros(())}


BATCHES = [
    {
        "x": np.random.default_rng(i).standard_normal((16, 8)).astype(np.float32),
        "y": np.random.default_rng(i + 9).standard_normal((16, 4)).astype(np.float32),
    }
    for i in range(2)
]
MESH = MeshSpec(axes=("data",), shape=(8,))
PLAN = Plan(data_parallel=DP("data"))


def test_correct_layout_passes() -> None:
    report = verify_layout(reduced, init, BATCHES, mesh=MESH, plan=PLAN)
    assert report.passed, report.describe()
    assert [s.step for s in report.steps] == [1, 2]
    text = report.describe()
    assert "PASS: the layout matches one device." in text
    assert "tolerance loss 0.0001, gradients 0.001" in text


def test_missing_gradient_reduction_fails_with_a_diff() -> None:
    report = verify_layout(forgot_reduction, init, BATCHES, mesh=MESH, plan=PLAN,
                           reference_step=reduced)  # fmt: skip
    assert not report.passed
    assert report.steps[0].loss_rel_diff < 1e-5  # same params at step 1: same loss
    assert max(report.steps[0].grad_rel_diff.values()) > 0.1
    text = report.describe()
    assert "FAIL" in text
    assert "gradients differ in ['b', 'w']" in text


def test_errors() -> None:
    with pytest.raises(ExecError, match=r"give at least one batch"):
        verify_layout(reduced, init, [], mesh=MESH, plan=PLAN)
    with pytest.raises(ExecError, match=r"returns no 'loss' metric"):
        verify_layout(no_loss, init, BATCHES, mesh=MESH, plan=PLAN)
