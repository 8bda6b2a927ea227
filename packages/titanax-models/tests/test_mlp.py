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

CONFIG = MLPConfig(sizes=(6, 12, 7, 3))


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


def test_init_paths_shapes_and_scale(fast_jit: Any) -> None:
    config = MLPConfig(sizes=(400, 300, 2))
    params = fast_jit(lambda k: mlp_init(config, k))(jax.random.key(0))
    assert [(tuple(p["kernel"].shape), tuple(p["bias"].shape)) for p in params["layers"]] == [
        ((400, 300), (300,)),
        ((300, 2), (2,)),
    ]
    # LeCun normal: std 1/sqrt(fan_in)
    np.testing.assert_allclose(np.std(params["layers"][0]["kernel"]), 1 / 20, rtol=0.05)
    np.testing.assert_array_equal(params["layers"][1]["bias"], np.zeros(2))
    shapes = jax.eval_shape(lambda k: mlp_init(CONFIG, k, dtype=jnp.bfloat16), jax.random.key(0))
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.bfloat16)}
    assert CONFIG.num_layers == 3


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


def test_apply_matches_numpy_for_every_activation(fast_jit: Any) -> None:
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        jnp.asarray,
        {
            "layers": [
                {"kernel": rng.normal(size=(a, b)).astype(np.float32), "bias": rng.normal(size=b)}
                for a, b in [(6, 12), (12, 7), (7, 3)]
            ]
        },
    )
    params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    configs = [dataclasses.replace(CONFIG, activation=a) for a in ("relu", "tanh", "gelu")]

    @fast_jit
    def run(p: Any, x: jax.Array) -> list[jax.Array]:
        return [mlp_apply(p, x, config=c) for c in configs]

    for config, out in zip(configs, run(params, x), strict=True):
        assert out.shape == (5, 3)
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(out, np_mlp(params, x, config.activation), rtol=1e-5, atol=1e-5)


def test_apply_errors() -> None:
    params = jax.eval_shape(lambda k: mlp_init(CONFIG, k), jax.random.key(0))
    x = jax.ShapeDtypeStruct((5, 4), jnp.float32)
    with pytest.raises(ModelError, match=r"mlp_apply: x has shape \(5, 4\); its last dim must be "):
        jax.eval_shape(functools.partial(mlp_apply, config=CONFIG), params, x)
    wide = MLPConfig(sizes=(6, 13, 7, 3))
    x = jax.ShapeDtypeStruct((5, 6), jnp.float32)
    with pytest.raises(
        ModelError, match=r"parameter layers/0/kernel has shape \(6, 12\), expected"
    ):
        jax.eval_shape(functools.partial(mlp_apply, config=wide), params, x)
    with pytest.raises(ModelError, match=r"mlp_init: config must be an MLPConfig, got tuple"):
        mlp_init((6, 3), jax.random.key(0))  # type: ignore[arg-type]
