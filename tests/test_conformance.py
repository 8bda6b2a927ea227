"""The layout conformance table: every parallel layout trains like one device.

For a small MLP and a small GPT, each layout of the table runs 10 steps of SGD through the
Engine and must match the 1-device run:

* losses of all steps and the parameters after every step (fp32, rtol 1e-5 — the layouts change
  the order of floating-point reductions and nothing else; 1e-5 bounds that over 10 steps of
  these sizes);
* the gradient of every step, recovered from SGD's update ``(p_t - p_{t+1}) / lr`` (rtol 1e-5,
  atol 1e-5: the fp32 rounding of ``p``, about 6e-8·|p|, divided by ``lr`` bounds its error);
* one compile for all 10 steps (no recompile), identical state shardings after init and after
  the steps, equal to the planned ones;
* data-parallel replicas bit-identical.

Per-device views are tested where they mean something: DP=8 with an explicit gradient ``pmean``
and DP=4×TP=2 with Megatron's column/row-parallel layers (``titanax.sharding.tp_layers``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from titanax.exec import Engine, TrainState, step_fn
from titanax.mesh import MeshSpec, collectives
from titanax.models import GPTConfig, MLPConfig, gpt_init, gpt_loss, mlp_apply, mlp_init
from titanax.sharding import DP, FSDP, TP, Plan, Rules, tp_layers, tp_rules
from titanax.testing import assert_trees_allclose

STEPS, LR, RTOL = 10, 0.1, 1e-5
GPT = GPTConfig(vocab_size=64, seq_len=16, d_model=32, n_heads=4, n_layers=2)
MLP = MLPConfig(sizes=(16, 32, 16), activation="tanh")
MLP_TP = Rules(
    {
        "layers/0/kernel": P(None, "tensor"),
        "layers/0/bias": P("tensor"),
        "layers/1/kernel": P("tensor", None),
    }
)


def mlp_loss(params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
    out = mlp_apply(params, batch["x"], config=MLP)
    return jnp.mean((out - batch["y"]) ** 2)


def gpt_batch_loss(params: Any, batch: Mapping[str, jax.Array]) -> Any:
    return gpt_loss(params, batch, config=GPT)


MODELS: dict[str, tuple[Callable[[jax.Array], Any], Callable[..., Any], Rules]] = {
    "mlp": (partial(mlp_init, MLP), mlp_loss, MLP_TP),
    "gpt": (partial(gpt_init, GPT), gpt_batch_loss, tp_rules.gpt()),
}


def make_batches(model: str) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(42)
    if model == "mlp":
        return [
            {
                "x": rng.standard_normal((16, 16)).astype(np.float32),
                "y": rng.standard_normal((16, 16)).astype(np.float32),
            }
            for _ in range(STEPS)
        ]
    tokens = rng.integers(0, GPT.vocab_size, (STEPS, 16, GPT.seq_len + 1)).astype(np.int32)
    return [{"inputs": t[:, :-1], "targets": t[:, 1:]} for t in tokens]


def train_step_for(loss_fn: Callable[..., Any]) -> Any:
    @step_fn
    def train_step(state: TrainState, batch: Any) -> Any:
        loss, grads = state.value_and_grad(loss_fn)(state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    return train_step


STEPS_BY_MODEL = {name: train_step_for(loss) for name, (_, loss, _) in MODELS.items()}


def run(engine: Engine, model: str, step: Any) -> dict[str, Any]:
    init, _, _ = MODELS[model]
    state = engine.create_state(init, jax.random.key(0))
    shardings_at_init = jax.tree.map(lambda x: x.sharding, state)
    params_trace, losses = [jax.device_get(state.params)], []
    for batch in make_batches(model):
        state, metrics = engine.step(step, state, batch)
        losses.append(float(metrics["loss"]))  # also awaits the step (CPU runtime note)
        params_trace.append(jax.device_get(state.params))
    grads = [
        jax.tree.map(lambda a, b: (a - b) / np.float32(LR), before, after)
        for before, after in itertools.pairwise(params_trace)
    ]
    return {
        "losses": losses,
        "params": params_trace[1:],
        "grads": grads,
        "state": state,
        "shardings_at_init": shardings_at_init,
    }


@pytest.fixture(scope="module", params=sorted(MODELS))
def reference(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    model = request.param
    engine = Engine(
        MeshSpec(axes=("data",), shape=(1,), devices=1),
        Plan(data_parallel=DP("data")),
        optimizer=optax.sgd(LR),
    )
    return model, run(engine, model, STEPS_BY_MODEL[model])


LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[int, ...], Callable[[Rules], Plan]]] = {
    "dp8": (("data",), (8,), lambda r: Plan(data_parallel=DP("data"))),
    "fsdp8": (("fsdp",), (8,), lambda r: Plan(fsdp=FSDP("fsdp", min_size_bytes=0))),
    "tp2": (
        ("data", "tensor"),
        (1, 2),
        lambda r: Plan(data_parallel=DP("data"), tensor_parallel=TP("tensor", rules=r)),
    ),
    "tp4": (
        ("data", "tensor"),
        (1, 4),
        lambda r: Plan(data_parallel=DP("data"), tensor_parallel=TP("tensor", rules=r)),
    ),
    "dp4xtp2": (
        ("data", "tensor"),
        (4, 2),
        lambda r: Plan(data_parallel=DP("data"), tensor_parallel=TP("tensor", rules=r)),
    ),
    "fsdp4xtp2": (
        ("fsdp", "tensor"),
        (4, 2),
        lambda r: Plan(fsdp=FSDP("fsdp", min_size_bytes=0), tensor_parallel=TP("tensor", rules=r)),
    ),
}


def check_against(reference: dict[str, Any], result: dict[str, Any], engine: Engine) -> None:
    np.testing.assert_allclose(result["losses"], reference["losses"], rtol=RTOL)
    for step, (got, want) in enumerate(zip(result["params"], reference["params"], strict=True)):
        try:
            assert_trees_allclose(got, want, rtol=RTOL, atol=1e-6)
        except AssertionError as err:
            raise AssertionError(f"params after step {step + 1}: {err}") from None
    for step, (got, want) in enumerate(zip(result["grads"], reference["grads"], strict=True)):
        try:
            assert_trees_allclose(got, want, rtol=RTOL, atol=1e-5)
        except AssertionError as err:
            raise AssertionError(f"gradients of step {step + 1}: {err}") from None
    state = result["state"]
    planned = jax.tree.leaves(engine.state_shardings(state))
    assert jax.tree.leaves(result["shardings_at_init"]) == planned
    assert jax.tree.leaves(jax.tree.map(lambda x: x.sharding, state)) == planned


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_global_view_layout_matches_one_device(
    layout: str, reference: tuple[str, dict[str, Any]]
) -> None:
    model, ref = reference
    axes, shape, make_plan = LAYOUTS[layout]
    plan = make_plan(MODELS[model][2])
    engine = Engine(MeshSpec(axes=axes, shape=shape, devices=int(np.prod(shape))), plan,
                    optimizer=optax.sgd(LR))  # fmt: skip
    step = STEPS_BY_MODEL[model]
    result = run(engine, model, step)
    check_against(ref, result, engine)
    assert engine.recompiles(step) == 0
    if "dp" in layout:  # data-parallel replicas hold bit-identical parameters
        for leaf in jax.tree.leaves(result["state"].params):
            by_index: dict[Any, np.ndarray] = {}
            for shard in leaf.addressable_shards:
                key = str(shard.index)
                data = np.asarray(shard.data)
                if key in by_index:
                    np.testing.assert_array_equal(data, by_index[key])
                by_index[key] = data


@step_fn(view="per_device")
def mlp_dp_step(state: TrainState, batch: Any) -> Any:
    loss, grads = state.value_and_grad(mlp_loss)(state.params, batch)
    grads = collectives.pmean(grads, "data")
    return state.apply_gradients(grads=grads), {"loss": collectives.pmean(loss, "data")}


def mlp_megatron_loss(params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
    """The MLP written for the per-device view: column- then row-parallel over "tensor"."""
    l0, l1 = params["layers"]
    h = jnp.tanh(
        tp_layers.column_parallel_dense(batch["x"], l0["kernel"], l0["bias"], axis="tensor")
    )
    out = tp_layers.row_parallel_dense(h, l1["kernel"], l1["bias"], axis="tensor")
    return jnp.mean((out - batch["y"]) ** 2)


@step_fn(view="per_device")
def mlp_dp_tp_step(state: TrainState, batch: Any) -> Any:
    loss, grads = state.value_and_grad(mlp_megatron_loss)(state.params, batch)
    grads = collectives.pmean(grads, "data")  # tensor-axis reductions live in the layers
    return state.apply_gradients(grads=grads), {"loss": collectives.pmean(loss, "data")}


# The per-device view is exercised on the MLP, whose loss is written with Megatron layers.
@pytest.mark.parametrize("reference", ["mlp"], indirect=True)
@pytest.mark.parametrize(
    ("name", "axes", "shape", "plan", "step"),
    [
        ("dp8", ("data",), (8,), Plan(data_parallel=DP("data")), mlp_dp_step),
        (
            "dp4xtp2",
            ("data", "tensor"),
            (4, 2),
            Plan(data_parallel=DP("data"), tensor_parallel=TP("tensor", rules=MLP_TP)),
            mlp_dp_tp_step,
        ),
    ],
)
def test_per_device_view_matches_one_device(
    name: str, axes: Any, shape: Any, plan: Plan, step: Any, reference: tuple[str, dict[str, Any]]
) -> None:
    _, ref = reference
    engine = Engine(MeshSpec(axes=axes, shape=shape), plan, optimizer=optax.sgd(LR))
    result = run(engine, "mlp", step)
    check_against(ref, result, engine)
    assert engine.recompiles(step) == 0
    spec = engine.state_shardings(result["state"]).params["layers"][0]["kernel"]
    assert isinstance(spec, NamedSharding)
