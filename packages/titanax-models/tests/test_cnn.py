"""CNNConfig / cnn_init / cnn_apply against a numpy convnet."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from titanax.models import CNNConfig, MLPConfig, ModelError, cnn_apply, cnn_init

CONFIG = CNNConfig(image_size=8, channels=(8, 16), num_classes=4, hidden=5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 0}, r"CNNConfig: image_size=0 must be a positive int"),
        ({"channels": ()}, r"channels=\(\) must be a non-empty sequence of channel counts"),
        ({"channels": (16, -1)}, r"CNNConfig: channels\[1\]=-1 must be a positive int"),
        ({"num_classes": 1.0}, r"CNNConfig: num_classes=1.0 is a float, not an int"),
        ({"hidden": 0}, r"CNNConfig: hidden=0 must be a positive int"),
        (
            {"image_size": 4, "channels": (8, 8, 8)},
            r"image_size=4 is too small for 3 conv blocks; .* needs image_size >= 8",
        ),
    ],
)
def test_invalid_configs_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ModelError, match=match):
        CNNConfig(**kwargs)


def test_defaults_and_feature_sizes() -> None:
    assert CNNConfig().feature_size == 2 * 2 * 32  # 8 -> 4 -> 2
    assert CNNConfig(image_size=28).feature_size == 7 * 7 * 32  # 28 -> 14 -> 7
    assert CNNConfig(image_size=7, channels=(4, 4)).feature_size == 1 * 1 * 4  # 7 -> 3 -> 1


def test_init_paths_and_shapes() -> None:
    shapes = jax.eval_shape(lambda k: cnn_init(CNNConfig(image_size=28), k), jax.random.key(0))
    flat, _ = jax.tree_util.tree_flatten_with_path(shapes)
    got = {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p): v.shape for p, v in flat
    }
    assert got == {
        "conv/0/kernel": (3, 3, 1, 16),
        "conv/0/bias": (16,),
        "conv/1/kernel": (3, 3, 16, 32),
        "conv/1/bias": (32,),
        "dense/0/kernel": (1568, 64),
        "dense/0/bias": (64,),
        "dense/1/kernel": (64, 10),
        "dense/1/bias": (10,),
    }


def np_cnn(params: Any, images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, np.float64)
    for layer in params["conv"]:
        w = np.asarray(layer["kernel"], np.float64)  # [3, 3, c_in, c_out]
        b, h, wd, _ = x.shape
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = np.zeros((b, h, wd, w.shape[3]))
        for i in range(h):
            for j in range(wd):
                patch = padded[:, i : i + 3, j : j + 3, :]  # [b, 3, 3, c_in]
                out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, w)
        x = np.maximum(out + np.asarray(layer["bias"], np.float64), 0.0)
        h2, w2 = h // 2, wd // 2
        x = x[:, : 2 * h2, : 2 * w2].reshape(b, h2, 2, w2, 2, -1).max(axis=(2, 4))
    x = x.reshape(x.shape[0], -1)
    d0, d1 = params["dense"]
    x = np.maximum(x @ np.asarray(d0["kernel"]) + np.asarray(d0["bias"]), 0.0)
    return x @ np.asarray(d1["kernel"]) + np.asarray(d1["bias"])


@pytest.fixture(scope="module")
def run(fast_jit: Any) -> dict[str, Any]:
    """One compiled program: init, then the forward on the init shifted by 0.1."""
    images = np.random.default_rng(0).uniform(size=(3, 8, 8, 1)).astype(np.float32)

    @fast_jit
    def program(key: jax.Array, images: jax.Array) -> dict[str, Any]:
        params = cnn_init(CONFIG, key)
        shifted = jax.tree.map(lambda a: a + 0.1, params)  # non-zero biases for the reference
        return {
            "params": params,
            "shifted": shifted,
            "logits": cnn_apply(shifted, images, config=CONFIG),
        }

    return {"images": images, **jax.tree.map(np.asarray, program(jax.random.key(0), images))}


def test_init_values(run: dict[str, Any]) -> None:
    params = run["params"]
    # LeCun normal: std 1/sqrt(fan_in), fan_in = 3 * 3 * c_in or d_in
    np.testing.assert_allclose(np.std(params["conv"][1]["kernel"]), 1 / np.sqrt(72), rtol=0.1)
    np.testing.assert_allclose(np.std(params["dense"][0]["kernel"]), 1 / np.sqrt(64), rtol=0.1)
    np.testing.assert_array_equal(params["conv"][0]["bias"], np.zeros(8))


def test_apply_matches_numpy(run: dict[str, Any]) -> None:
    logits = run["logits"]
    assert logits.shape == (3, 4)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, np_cnn(run["shifted"], run["images"]), rtol=1e-5, atol=1e-5)


def test_apply_errors() -> None:
    params = jax.eval_shape(lambda k: cnn_init(CONFIG, k), jax.random.key(0))
    apply = functools.partial(cnn_apply, config=CONFIG)
    with pytest.raises(
        ModelError, match=r"images have shape \(3, 8, 8\), expected \[batch, 8, 8, 1"
    ):
        jax.eval_shape(apply, params, jax.ShapeDtypeStruct((3, 8, 8), jnp.float32))
    other = CNNConfig(image_size=8, channels=(8, 4), num_classes=4, hidden=5)
    with pytest.raises(
        ModelError,
        match=r"cnn_apply: parameter conv/1/kernel has shape \(3, 3, 8, 16\), "
        r"expected \(3, 3, 8, 4\)",
    ):
        jax.eval_shape(
            functools.partial(cnn_apply, config=other),
            params,
            jax.ShapeDtypeStruct((3, 8, 8, 1), jnp.float32),
        )
    with pytest.raises(ModelError, match=r"cnn_init: config must be a CNNConfig, got MLPConfig"):
        cnn_init(MLPConfig(sizes=(2, 2)), jax.random.key(0))  # type: ignore[arg-type]
