"""TrainState: updates against optax by hand, accumulation, precision, loss scaling, PRNG."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from titanax.exec import (
    ExecError,
    Precision,
    StateError,
    StepContext,
    TrainState,
)
from titanax.testing import assert_trees_allclose, assert_trees_equal


def make_params() -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)  # per call: tests do not depend on each other's draws
    return {
        "w": jnp.asarray(rng.standard_normal((6, 4)), jnp.float32),
        "b": jnp.zeros((4,), jnp.float32),
    }


def masked_loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array, mask: jax.Array):  # type: ignore[no-untyped-def]
    pred = jnp.tanh(x @ params["w"] + params["b"])
    per_example = jnp.sum((pred - y) ** 2, axis=-1)
    return jnp.sum(per_example * mask), jnp.sum(mask)


def batch(n: int = 16) -> tuple[jax.Array, jax.Array, jax.Array]:
    rng = np.random.default_rng(n)
    x = jnp.asarray(rng.standard_normal((n, 6)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((n, 4)), jnp.float32)
    mask = jnp.asarray(rng.random(n) < 0.6, jnp.float32).at[0].set(1.0)  # ragged
    return x, y, mask


def test_apply_gradients_matches_optax_by_hand() -> None:
    params = make_params()
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))
    state = TrainState.create(params=params, tx=tx)
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.3, params)
    new = state.apply_gradients(grads=grads)
    updates, opt_state = tx.update(grads, tx.init(params), params)
    assert_trees_allclose(new.params, optax.apply_updates(params, updates), rtol=1e-6)
    assert_trees_allclose(new.opt_state, opt_state, rtol=1e-6)
    assert int(new.step) == 1
    assert int(new.skipped) == 0


def test_value_and_grad_normalizes_sums_by_weight() -> None:
    params = make_params()
    state = TrainState.create(params=params, tx=optax.sgd(0.1))
    x, y, mask = batch()
    loss, grads = state.value_and_grad(masked_loss)(params, x, y, mask)

    def mean_loss(p):  # type: ignore[no-untyped-def]
        s, w = masked_loss(p, x, y, mask)
        return s / w

    ref_loss, ref_grads = jax.value_and_grad(mean_loss)(params)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    assert_trees_allclose(grads, ref_grads, rtol=1e-5)


def test_python_number_weight_is_accepted() -> None:
    params = make_params()
    state = TrainState.create(params=params, tx=optax.sgd(0.1))
    loss, _ = state.value_and_grad(lambda p: (jnp.sum(p["w"] ** 2), 4.0))(params)
    np.testing.assert_allclose(float(loss), float(jnp.sum(params["w"] ** 2)) / 4.0, rtol=1e-6)


def test_accumulation_4_vs_1_with_ragged_mask() -> None:
    params = make_params()
    base = TrainState.create(params=params, tx=optax.sgd(0.1))
    x, y, mask = batch(16)
    one = jax.jit(lambda s: s.value_and_grad(masked_loss)(s.params, x, y, mask))(base)
    four_state = base.replace(context=StepContext(accumulate_steps=4))
    four = jax.jit(lambda s: s.value_and_grad(masked_loss)(s.params, x, y, mask))(four_state)
    np.testing.assert_allclose(float(four[0]), float(one[0]), rtol=1e-5)
    assert_trees_allclose(four[1], one[1], rtol=1e-5, atol=1e-7)


def test_accumulation_rejects_indivisible_batch() -> None:
    params = make_params()
    state = TrainState.create(params=params, tx=optax.sgd(0.1)).replace(
        context=StepContext(accumulate_steps=3)
    )
    x, y, mask = batch(16)
    with pytest.raises(ExecError, match=r"batch dim 16 .* does not divide into accumulate_steps=3"):
        state.value_and_grad(masked_loss)(params, x, y, mask)


def test_loss_fn_output_is_checked() -> None:
    params = make_params()
    state = TrainState.create(params=params, tx=optax.sgd(0.1))
    with pytest.raises(
        ExecError, match=r"must return a scalar mean loss or a \(loss_sum, weight\)"
    ):
        state.value_and_grad(lambda p: p["w"])(params)
    with pytest.raises(ExecError, match=r"reductions over mesh axes exist only in the per-device"):
        state.value_and_grad(lambda p: p["w"].sum(), reduce_axes="data")


def test_bf16_policy_keeps_fp32_master_and_optimizer_state() -> None:
    params = make_params()
    x, y, mask = batch()
    runs = {}
    for compute in ("float32", "bfloat16"):
        state = TrainState.create(
            params=params, tx=optax.adam(1e-2), precision=Precision(compute_dtype=compute)
        )

        @jax.jit
        def step(s: TrainState) -> TrainState:
            _, g = s.value_and_grad(masked_loss)(s.params, x, y, mask)
            return s.apply_gradients(grads=g)

        for _ in range(5):
            state = step(state)
        runs[compute] = state
    bf16 = runs["bfloat16"]
    for leaf in jax.tree.leaves((bf16.params, bf16.opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
    # bf16 compute moves the params like fp32: the total update differs by a few percent at
    # most (bf16 has 8 mantissa bits; Adam's normalization amplifies tiny-gradient noise
    # elementwise, so the comparison is on the whole update vector).
    for name in params:
        delta32 = np.asarray(runs["float32"].params[name] - params[name]).ravel()
        delta16 = np.asarray(bf16.params[name] - params[name]).ravel()
        if np.linalg.norm(delta32) > 0:
            rel = np.linalg.norm(delta16 - delta32) / np.linalg.norm(delta32)
            assert rel < 0.05, (name, rel)


def test_fp16_inf_skips_update_and_halves_scale() -> None:
    params = make_params()
    precision = Precision(compute_dtype="float16", initial_scale=1024.0, growth_interval=2)
    state = TrainState.create(params=params, tx=optax.sgd(0.1), precision=precision)
    assert state.loss_scale.scale.dtype == jnp.float32
    bad = jax.tree.map(lambda p: jnp.full_like(p, jnp.inf), params)
    after_bad = jax.jit(lambda s, g: s.apply_gradients(grads=g))(state, bad)
    assert_trees_equal(after_bad.params, state.params)
    assert float(after_bad.loss_scale.scale) == 512.0
    assert int(after_bad.skipped) == 1
    good = jax.tree.map(jnp.ones_like, params)
    s1 = after_bad.apply_gradients(grads=good)
    s2 = s1.apply_gradients(grads=good)
    assert float(s1.loss_scale.scale) == 512.0
    assert float(s2.loss_scale.scale) == 1024.0  # grows after growth_interval finite steps
    assert not np.allclose(np.asarray(s2.params["w"]), np.asarray(params["w"]))


def test_fp16_value_and_grad_unscales() -> None:
    params = make_params()
    x, y, mask = batch()
    state = TrainState.create(
        params=params,
        tx=optax.sgd(0.1),
        precision=Precision(compute_dtype="float16", initial_scale=256.0),
    )
    loss, grads = state.value_and_grad(masked_loss)(params, x, y, mask)
    ref = TrainState.create(params=params, tx=optax.sgd(0.1))
    ref_loss, ref_grads = ref.value_and_grad(masked_loss)(params, x, y, mask)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=5e-3)
    assert_trees_allclose(grads, ref_grads, rtol=0.05, atol=5e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"compute_dtype": "int8"}, r"compute_dtype='int8' is not one of"),
        ({"compute_dtype": "float16", "loss_scaling": "none"}, r"underflows small gradients"),
        ({"loss_scaling": "static"}, r"loss_scaling='static' must be 'dynamic' or 'none'"),
        ({"backoff_factor": 1.5}, r"backoff_factor=1.5 must be in \(0, 1\)"),
        ({"growth_interval": 0}, r"growth_interval=0 must be a positive int"),
        ({"initial_scale": -1.0}, r"initial_scale=-1.0 must be > 0"),
    ],
)
def test_precision_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ExecError, match=match):
        Precision(**kwargs)  # type: ignore[arg-type]


def test_rng_streams_fold_step() -> None:
    state = TrainState.create(
        params=make_params(), tx=optax.sgd(0.1), rngs={"dropout": jax.random.key(3)}
    )
    k0 = jax.random.key_data(state.rng("dropout"))
    k1 = jax.random.key_data(state.replace(step=state.step + 1).rng("dropout"))
    assert not np.array_equal(np.asarray(k0), np.asarray(k1))
    expected = jax.random.key_data(jax.random.fold_in(jax.random.key(3), 0))
    np.testing.assert_array_equal(np.asarray(k0), np.asarray(expected))
    with pytest.raises(StateError, match=r"no PRNG stream 'noise'; streams are \['dropout'\]"):
        state.rng("noise")
    with pytest.raises(StateError, match=r"rngs\['bad'\] is float32\[3\], not a PRNG key"):
        TrainState.create(params=make_params(), tx=optax.sgd(0.1), rngs={"bad": jnp.zeros(3)})


def test_structure_and_optimizer_errors() -> None:
    state = TrainState.create(params=make_params(), tx=optax.sgd(0.1))
    with pytest.raises(StateError, match=r"grads do not have the structure of params"):
        state.apply_gradients(grads={"w": jnp.zeros((6, 4))})
    with pytest.raises(StateError, match=r"is not an optax.GradientTransformation"):
        TrainState.create(params=make_params(), tx=object())  # type: ignore[arg-type]
    with pytest.raises(StateError, match=r"has no hyperparams; build the optimizer with"):
        state.with_hyperparams(learning_rate=0.1)


def test_learning_rate_change_does_not_recompile() -> None:
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    state = TrainState.create(params=make_params(), tx=tx)
    grads = jax.tree.map(jnp.ones_like, state.params)
    traces = []

    @jax.jit
    def step(s: TrainState) -> TrainState:
        traces.append(1)
        return s.apply_gradients(grads=grads)

    s1 = step(state)
    s2 = step(s1.with_hyperparams(learning_rate=0.5))
    assert len(traces) == 1
    np.testing.assert_allclose(
        np.asarray(s1.params["b"] - s2.params["b"]), np.full(4, 0.5), rtol=1e-6
    )
    with pytest.raises(
        StateError, match=r"unknown \['lr'\]; the optimizer has \['learning_rate'\]"
    ):
        state.with_hyperparams(lr=0.1)


def test_state_is_a_pytree_with_static_fields() -> None:
    state = TrainState.create(params=make_params(), tx=optax.sgd(0.1))
    leaves = jax.tree.leaves(state)
    assert all(isinstance(x, jax.Array) for x in leaves)
    fields = {f.name for f in dataclasses.fields(TrainState)}
    assert {"tx", "precision", "context"} <= fields
