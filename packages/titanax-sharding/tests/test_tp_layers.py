"""tp_layers against the unsharded computation: values and gradients, per device.

Each layer runs inside ``jax.shard_map`` over an 8-way tensor axis with ``check_vma=False`` (the
per-device view), and ``jax.grad`` is taken inside, per device — as the Engine's per-device step
does. Sharded gradients are reassembled by ``out_specs`` and compared with the 1-device gradient;
replicated values and gradients are stacked per device (``[None]`` + ``P(T)``) so every device's
copy is checked. Tolerance: float32 matmuls over at most 64 terms, 1e-5 relative.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from titanax.mesh import CollectiveError, MeshSpec
from titanax.sharding import ShardingError
from titanax.sharding.tp_layers import (
    column_parallel_dense,
    row_parallel_dense,
    vocab_parallel_cross_entropy,
    vocab_parallel_embed,
)

T = "tensor"
N = 8
RNG = np.random.default_rng(0)
TOL = {"rtol": 1e-5, "atol": 1e-5}


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def mesh() -> jax.sharding.Mesh:
    return MeshSpec(axes=(T,), shape=(N,)).build()


def per_device(
    mesh: jax.sharding.Mesh, fn: Callable[..., Any], in_specs: Any, out_specs: Any
) -> Callable[..., Any]:
    return jax.jit(
        jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    )


def each_device(stacked: Any, expected: Any) -> None:
    stacked = np.asarray(stacked)
    assert stacked.shape[0] == N
    for copy in stacked:
        np.testing.assert_allclose(copy, np.asarray(expected), **TOL)


def test_column_then_row_mlp(mesh) -> None:  # type: ignore[no-untyped-def]
    x, w1, b1, w2, b2, c = rand(4, 8), rand(8, 32), rand(32), rand(32, 8), rand(8), rand(4, 8)

    def reference(x, w1, b1, w2, b2):  # type: ignore[no-untyped-def]
        y = jnp.tanh(x @ w1 + b1) @ w2 + b2
        return jnp.sum(y * c), y

    (ref_loss, ref_y), ref_grads = jax.value_and_grad(reference, argnums=range(5), has_aux=True)(
        x, w1, b1, w2, b2
    )

    def local(x, w1, b1, w2, b2):  # type: ignore[no-untyped-def]
        def loss(x, w1, b1, w2, b2):  # type: ignore[no-untyped-def]
            h = column_parallel_dense(x, w1, b1, axis=T)
            y = row_parallel_dense(jnp.tanh(h), w2, b2, axis=T)
            return jnp.sum(y * c), y

        (value, y), g = jax.value_and_grad(loss, argnums=range(5), has_aux=True)(x, w1, b1, w2, b2)
        return value[None], y[None], g[0][None], g[1], g[2], g[3], g[4][None]

    f = per_device(
        mesh,
        local,
        in_specs=(P(), P(None, T), P(T), P(T, None), P()),
        out_specs=(P(T), P(T), P(T), P(None, T), P(T), P(T, None), P(T)),
    )
    loss, y, dx, dw1, db1, dw2, db2 = (np.asarray(a) for a in f(x, w1, b1, w2, b2))
    each_device(loss, ref_loss)
    each_device(y, ref_y)
    each_device(dx, ref_grads[0])  # the column layer's backward psum makes dx whole everywhere
    np.testing.assert_allclose(dw1, ref_grads[1], **TOL)
    np.testing.assert_allclose(db1, ref_grads[2], **TOL)
    np.testing.assert_allclose(dw2, ref_grads[3], **TOL)
    each_device(db2, ref_grads[4])  # bias added once, after the psum: not counted n times


def test_column_gather_output(mesh) -> None:  # type: ignore[no-untyped-def]
    x, w, b, c = rand(3, 8), rand(8, 16), rand(16), rand(3, 16)

    def reference(x, w, b):  # type: ignore[no-untyped-def]
        y = x @ w + b
        return jnp.sum(jnp.sin(y) * c), y

    (ref_loss, ref_y), ref_grads = jax.value_and_grad(reference, argnums=range(3), has_aux=True)(
        x, w, b
    )

    def local(x, w, b):  # type: ignore[no-untyped-def]
        def loss(x, w, b):  # type: ignore[no-untyped-def]
            y = column_parallel_dense(x, w, b, axis=T, gather_output=True)
            return jnp.sum(jnp.sin(y) * c), y

        (value, y), g = jax.value_and_grad(loss, argnums=range(3), has_aux=True)(x, w, b)
        return value[None], y[None], g[0][None], g[1], g[2]

    f = per_device(
        mesh,
        local,
        in_specs=(P(), P(None, T), P(T)),
        out_specs=(P(T), P(T), P(T), P(None, T), P(T)),
    )
    loss, y, dx, dw, db = (np.asarray(a) for a in f(x, w, b))
    each_device(loss, ref_loss)
    each_device(y, ref_y)
    each_device(dx, ref_grads[0])
    np.testing.assert_allclose(dw, ref_grads[1], **TOL)
    np.testing.assert_allclose(db, ref_grads[2], **TOL)


def test_vocab_parallel_embed(mesh) -> None:  # type: ignore[no-untyped-def]
    vocab, d = 64, 4
    table, c = rand(vocab, d), rand(3, 5, d)
    tokens = RNG.integers(0, vocab, size=(3, 5)).astype(np.int32)
    tokens[0, :2] = [0, vocab - 1]  # the first and last rows, owned by the first/last device

    def reference(table):  # type: ignore[no-untyped-def]
        out = table[tokens]
        return jnp.sum(out * c), out

    (ref_loss, ref_out), ref_dtable = jax.value_and_grad(reference, has_aux=True)(table)

    def local(tokens, table):  # type: ignore[no-untyped-def]
        def loss(table):  # type: ignore[no-untyped-def]
            out = vocab_parallel_embed(tokens, table, axis=T)
            return jnp.sum(out * c), out

        (value, out), g = jax.value_and_grad(loss, has_aux=True)(table)
        return value[None], out[None], g

    f = per_device(mesh, local, in_specs=(P(), P(T, None)), out_specs=(P(T), P(T), P(T, None)))
    loss, out, dtable = (np.asarray(a) for a in f(tokens, table))
    each_device(loss, ref_loss)
    each_device(out, ref_out)
    np.testing.assert_allclose(dtable, ref_dtable, **TOL)


def reference_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logz = np.log(np.exp(z).sum(-1))
    return logz - np.take_along_axis(z, labels[..., None], -1)[..., 0]


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_vocab_parallel_cross_entropy(mesh, offset: float) -> None:  # type: ignore[no-untyped-def]
    vocab = 64
    logits = rand(2, 3, vocab) * 5 + offset  # a 1e4 offset overflows a naive exp
    labels = RNG.integers(0, vocab, size=(2, 3)).astype(np.int32)
    labels[0, 0], labels[0, 1] = 0, vocab - 1
    weights = rand(2, 3)

    def reference(logits):  # type: ignore[no-untyped-def]
        per_token = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1)[..., 0]
        return jnp.sum(per_token * weights), per_token

    (ref_loss, ref_tokens), ref_dlogits = jax.value_and_grad(reference, has_aux=True)(logits)

    def local(logits, labels):  # type: ignore[no-untyped-def]
        def loss(logits):  # type: ignore[no-untyped-def]
            per_token = vocab_parallel_cross_entropy(logits, labels, axis=T)
            return jnp.sum(per_token * weights), per_token

        (value, per_token), g = jax.value_and_grad(loss, has_aux=True)(logits)
        return value[None], per_token[None], g

    f = per_device(
        mesh, local, in_specs=(P(None, None, T), P()), out_specs=(P(T), P(T), P(None, None, T))
    )
    loss, per_token, dlogits = (np.asarray(a) for a in f(logits, labels))
    assert np.isfinite(per_token).all()
    assert np.isfinite(dlogits).all()
    each_device(per_token, reference_cross_entropy(logits, labels))
    each_device(per_token, ref_tokens)
    each_device(loss, ref_loss)
    np.testing.assert_allclose(dlogits, ref_dlogits, **TOL)


def test_layers_check_their_inputs(mesh) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        ShardingError, match=r"column_parallel_dense: input shape \(2, 3\) does not"
    ):
        column_parallel_dense(jnp.zeros((2, 3)), jnp.zeros((4, 2)), axis=T)
    with pytest.raises(
        ShardingError, match=r"row_parallel_dense: bias shape \(3,\) must be \(2,\)"
    ):
        row_parallel_dense(jnp.zeros((2, 4)), jnp.zeros((4, 2)), jnp.zeros(3), axis=T)
    with pytest.raises(ShardingError, match=r"kernel shard has shape \(4,\); expected rank 2"):
        column_parallel_dense(jnp.zeros((2, 4)), jnp.zeros(4), axis=T)
    with pytest.raises(ShardingError, match="tokens have dtype float32; expected integer ids"):
        vocab_parallel_embed(jnp.zeros(3), jnp.zeros((4, 2)), axis=T)
    with pytest.raises(ShardingError, match="table shard has shape"):
        vocab_parallel_embed(jnp.zeros(3, jnp.int32), jnp.zeros(4), axis=T)
    with pytest.raises(ShardingError, match=r"labels shape \(3,\) must equal .* \(2,\)"):
        vocab_parallel_cross_entropy(jnp.zeros((2, 8)), jnp.zeros(3, jnp.int32), axis=T)
    with pytest.raises(CollectiveError, match="axis 'tensor' is not bound"):
        row_parallel_dense(jnp.zeros((2, 4)), jnp.zeros((4, 2)), axis=T)
