"""cross_entropy / softmax_cross_entropy_int against numpy, masks, and gpt_loss."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from titanax.models import (
    GPTConfig,
    ModelError,
    cross_entropy,
    gpt_apply,
    gpt_init,
    gpt_loss,
    softmax_cross_entropy_int,
)

# jitted once each: eager dispatch would compile every primitive separately
ce = jax.jit(cross_entropy)
sce = jax.jit(softmax_cross_entropy_int)

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(2, 3, 5)).astype(np.float32) * 3
LABELS = RNG.integers(0, 5, size=(2, 3)).astype(np.int32)


def np_token_losses(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def test_softmax_cross_entropy_int_matches_numpy() -> None:
    out = sce(jnp.asarray(LOGITS), jnp.asarray(LABELS))
    assert out.shape == (2, 3)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, np_token_losses(LOGITS, LABELS), rtol=1e-6)
    low = sce(jnp.asarray(LOGITS, jnp.bfloat16), jnp.asarray(LABELS))
    assert low.dtype == jnp.float32


def test_cross_entropy_returns_sum_and_count() -> None:
    total, count = ce(jnp.asarray(LOGITS), jnp.asarray(LABELS))
    assert total.dtype == count.dtype == jnp.float32
    assert total.shape == count.shape == ()
    np.testing.assert_allclose(total, np_token_losses(LOGITS, LABELS).sum(), rtol=1e-6)
    assert float(count) == 6.0


def test_cross_entropy_mask() -> None:
    mask = np.array([[True, False, True], [False, False, True]])
    total, count = ce(jnp.asarray(LOGITS), jnp.asarray(LABELS), jnp.asarray(mask))
    np.testing.assert_allclose(total, np_token_losses(LOGITS, LABELS)[mask].sum(), rtol=1e-6)
    assert float(count) == 3.0
    # numeric masks are weights; a -inf/NaN-free result even where logits are huge and masked
    weights = mask.astype(np.float32) * 0.5
    total_w, count_w = ce(jnp.asarray(LOGITS), jnp.asarray(LABELS), jnp.asarray(weights))
    np.testing.assert_allclose(total_w, float(total) / 2, rtol=1e-6)
    assert float(count_w) == 1.5
    none = jnp.zeros((2, 3), bool)
    assert [float(v) for v in ce(jnp.asarray(LOGITS), jnp.asarray(LABELS), none)] == [
        0.0,
        0.0,
    ]


def test_accumulating_sums_and_counts_gives_the_global_mean() -> None:
    mask = np.array([[True, True, True], [False, False, True]])
    parts = [
        ce(jnp.asarray(LOGITS[i : i + 1]), jnp.asarray(LABELS[i : i + 1]), mask[i : i + 1])
        for i in range(2)
    ]
    mean = sum(float(s) for s, _ in parts) / sum(float(c) for _, c in parts)
    np.testing.assert_allclose(mean, np_token_losses(LOGITS, LABELS)[mask].mean(), rtol=1e-6)


@pytest.mark.parametrize(
    ("labels", "mask", "match"),
    [
        (np.zeros((2, 4), np.int32), None, r"labels have shape \(2, 4\) but logits \(2, 3, 5\)"),
        (np.zeros((2, 3), np.float32), None, r"labels must be integer class ids, got dtype float"),
        (LABELS, np.ones((3, 2), bool), r"cross_entropy: mask has shape \(3, 2\) but labels \(2,"),
    ],
)
def test_cross_entropy_errors(labels: np.ndarray, mask: np.ndarray | None, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        ce(jnp.asarray(LOGITS), jnp.asarray(labels), None if mask is None else jnp.asarray(mask))


CONFIG = GPTConfig(vocab_size=16, seq_len=4, d_model=8, n_heads=2, n_layers=1)


@pytest.fixture(scope="module")
def params() -> Any:
    # Random parameters in the gpt_init structure, made without compiling an init.
    shapes = jax.eval_shape(lambda k: gpt_init(CONFIG, k), jax.random.key(0))
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.3, s.dtype), shapes)


def test_gpt_loss_is_the_masked_mean(params: Any, fast_jit: Any) -> None:
    inputs = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.int32)
    targets = np.array([[2, 3, 4, 5], [6, 7, 8, 9]], np.int32)
    mask = np.array([[True, True, False, False], [True, True, True, True]])
    batch = {"inputs": inputs, "targets": targets}

    @fast_jit
    def run(p: Any) -> Any:
        return (
            gpt_apply(p, inputs, config=CONFIG),
            gpt_loss(p, batch, config=CONFIG),
            gpt_loss(p, {**batch, "mask": mask}, config=CONFIG),
            gpt_loss(p, {**batch, "mask": np.zeros_like(mask)}, config=CONFIG),
        )

    logits, loss, masked, empty = run(params)
    losses = np_token_losses(np.asarray(logits), targets)
    np.testing.assert_allclose(loss, losses.mean(), rtol=1e-5)
    np.testing.assert_allclose(masked, losses[mask].mean(), rtol=1e-5)
    assert float(empty) == 0.0
    assert loss.dtype == jnp.float32


def test_gpt_loss_errors(params: Any) -> None:
    tokens = jnp.zeros((2, 4), jnp.int32)
    with pytest.raises(ModelError, match=r"gpt_loss: batch is missing \['targets'\]"):
        gpt_loss(params, {"inputs": tokens}, config=CONFIG)
    with pytest.raises(ModelError, match=r"gpt_loss: targets have shape \(2, 3\) but inputs \(2,"):
        gpt_loss(params, {"inputs": tokens, "targets": tokens[:, :3]}, config=CONFIG)
