"""MLPConfig / mlp_init / mlp_apply against a numpy forward."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from titanax.models import MLPConfig, ModelError, mlp_apply, mlp_init

CONFIG = MLPConfig(sizes=(64, 48, 7, 3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sizes": (4,)}, r"MLPConfig: sizes=\(4,\) must be a sequence \(in, hidden..., out\)"),
        ({"sizes": 4}, r"MLPConfig: sizes=4 must be a sequence"),
        ({"sizes": (4, 0, 2)}, r"MLPConfig: sizes\[1\]=0 must be a positive int"),
        ({"sizes": (4, 2.5)}, r"MLPConfig: sizes\[1\]=2.5 is a float, not an int"),
        (
            {"sizes": (4, 2), "activation": "swish"},
            r"activation='swish' is not one of \['gelu', 'relu', 'tanh'\]",
        ),
    ],
)
def test_invalid_configs_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ModelError, match=match):
        MLPConfig(**kwargs)


def np_mlp(params: Any, x: np.ndarray, activation: str) -> np.ndarray:
    acts = {
        "relu": lambda z: np.maximum(z, 0.0),
        "tanh": np.tanh,
        "gelu": lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3))),
    }
    h = np.asarray(x, np.float64)
    layers = params["layers"]
    for i, layer in enumerate(layers):
        h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        if i < len(layers) - 1:
            h = acts[activation](h)
    return h


@pytest.fixture(scope="module")
def run(fast_jit: Any) -> dict[str, Any]:
    """One compiled program: init, then every activation on the init shifted by 0.1."""
    configs = {a: dataclasses.replace(CONFIG, activation=a) for a in ("relu", "tanh", "gelu")}
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)

    @fast_jit
    def program(key: jax.Array, x: jax.Array) -> dict[str, Any]:
        params = mlp_init(CONFIG, key)
        shifted = jax.tree.map(lambda a: a + 0.1, params)  # non-zero biases for the reference
        outs = {a: mlp_apply(shifted, x, config=c) for a, c in configs.items()}
        return {"params": params, "shifted": shifted, "outs": outs}

    return {"x": x, **jax.tree.map(np.asarray, program(jax.random.key(0), x))}


def test_init_paths_shapes_and_scale(run: dict[str, Any]) -> None:
    params = run["params"]
    assert [(p["kernel"].shape, p["bias"].shape) for p in params["layers"]] == [
        ((64, 48), (48,)),
        ((48, 7), (7,)),
        ((7, 3), (3,)),
    ]
    assert {p.dtype for p in jax.tree.leaves(params)} == {np.dtype(np.float32)}
    # LeCun normal: std 1/sqrt(fan_in)
    np.testing.assert_allclose(np.std(params["layers"][0]["kernel"]), 1 / 8, rtol=0.05)
    np.testing.assert_array_equal(params["layers"][1]["bias"], np.zeros(7))
    shapes = jax.eval_shape(lambda k: mlp_init(CONFIG, k, dtype=jnp.bfloat16), jax.random.key(0))
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.bfloat16)}
    assert CONFIG.num_layers == 3


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_apply_matches_numpy(run: dict[str, Any], activation: str) -> None:
    out = run["outs"][activation]
    assert out.shape == (5, 3)
    assert out.dtype == np.float32
    expected = np_mlp(run["shifted"], run["x"], activation)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_apply_errors() -> None:
    params = jax.eval_shape(lambda k: mlp_init(CONFIG, k), jax.random.key(0))
    x = jax.ShapeDtypeStruct((5, 4), jnp.float32)
    with pytest.raises(
        ModelError, match=r"mlp_apply: x has shape \(5, 4\); its last dim must be s"
    ):
        jax.eval_shape(functools.partial(mlp_apply, config=CONFIG), params, x)
    wide = MLPConfig(sizes=(64, 13, 7, 3))
    x = jax.ShapeDtypeStruct((5, 64), jnp.float32)
    with pytest.raises(
        ModelError, match=r"parameter layers/0/kernel has shape \(64, 48\), expected \(64, 13\)"
    ):
        jax.eval_shape(functools.partial(mlp_apply, config=wide), params, x)
    with pytest.raises(ModelError, match=r"mlp_init: config must be an MLPConfig, got tuple"):
        mlp_init((6, 3), jax.random.key(0))  # type: ignore[arg-type]
