"""Megatron tensor-parallel layers for the per-device view (inside ``jax.shard_map``).

Shapes are per device; ``n`` is the size of ``axis`` (the tensor axis). Each layer writes its
collectives out through :mod:`titanax.mesh.collectives`, and each is differentiable with the
gradients of the unsharded computation when run with ``check_vma=False`` — the per-device view
Titanax uses, where a replicated value's gradient is computed per device and every reduction is
explicit. That needs Megatron's conjugate operators (Shoeybi et al., 2019, §3, "f" and "g"),
written here as ``jax.custom_vjp`` pairs:

* ``copy`` (Megatron *f*): identity forward, ``psum`` of the cotangent backward — where a
  replicated input enters a column-parallel layer;
* ``reduce`` (Megatron *g*): ``psum`` forward, identity backward — where a row-parallel layer's
  partial products (or a vocab-parallel lookup) are summed;
* ``gather``: ``all_gather`` along the last dim forward, each device's own block of the
  cotangent backward.

Example:
  >>> import jax, jax.numpy as jnp, numpy as np
  >>> from jax.sharding import PartitionSpec as P
  >>> from titanax.mesh import MeshSpec
  >>> mesh = MeshSpec(axes=("tensor",), shape=(8,)).build()
  >>> def mlp(x, w1, w2):
  ...     h = column_parallel_dense(x, w1, axis="tensor")
  ...     return row_parallel_dense(jnp.tanh(h), w2, axis="tensor")
  >>> f = jax.jit(jax.shard_map(mlp, mesh=mesh, out_specs=P(), check_vma=False,
  ...                           in_specs=(P(), P(None, "tensor"), P("tensor", None))))
  >>> rng = np.random.default_rng(0)
  >>> x, w1, w2 = (rng.standard_normal(s, np.float32) for s in ((2, 4), (4, 16), (16, 4)))
  >>> bool(np.allclose(f(x, w1, w2), np.tanh(x @ w1) @ w2, atol=1e-5))
  True

References:
  Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models Using Model
  Parallelism", 2019, https://arxiv.org/abs/1909.08053; ``jax.shard_map``; ``jax.custom_vjp``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from titanax.mesh import collectives
from titanax.mesh.collectives import AxisName
from titanax.sharding._errors import ShardingError

__all__ = [
    "column_parallel_dense",
    "row_parallel_dense",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_embed",
]


def _axis_key(axis: AxisName) -> AxisName:
    return tuple(axis) if isinstance(axis, list) else axis


# -- Megatron's conjugate operators -----------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _copy(x: jax.Array, axis: AxisName) -> jax.Array:
    return x


def _copy_fwd(x: jax.Array, axis: AxisName) -> tuple[jax.Array, None]:
    return x, None


def _copy_bwd(axis: AxisName, _: None, g: jax.Array) -> tuple[jax.Array]:
    return (collectives.psum(g, axis),)


_copy.defvjp(_copy_fwd, _copy_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _reduce(x: jax.Array, axis: AxisName) -> jax.Array:
    return collectives.psum(x, axis)


def _reduce_fwd(x: jax.Array, axis: AxisName) -> tuple[jax.Array, None]:
    return collectives.psum(x, axis), None


def _reduce_bwd(axis: AxisName, _: None, g: jax.Array) -> tuple[jax.Array]:
    return (g,)


_reduce.defvjp(_reduce_fwd, _reduce_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _gather(x: jax.Array, axis: AxisName) -> jax.Array:
    return collectives.all_gather(x, axis, tiled=True, gather_dim=-1)


def _gather_fwd(x: jax.Array, axis: AxisName) -> tuple[jax.Array, None]:
    return _gather(x, axis), None


def _gather_bwd(axis: AxisName, _: None, g: jax.Array) -> tuple[jax.Array]:
    n = collectives.axis_size(axis)
    block = g.shape[-1] // n
    start = collectives.axis_index(axis) * block
    return (lax.dynamic_slice_in_dim(g, start, block, axis=g.ndim - 1),)


_gather.defvjp(_gather_fwd, _gather_bwd)


# -- layers ------------------------------------------------------------------------------------


def _check_dense(api: str, x: Any, kernel: Any, bias: Any, out: int) -> None:
    if jnp.ndim(kernel) != 2:
        raise ShardingError(
            f"tp_layers.{api}: kernel shard has shape {jnp.shape(kernel)}; expected rank 2 "
            "[in, out] (per device)."
        )
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != jnp.shape(kernel)[0]:
        raise ShardingError(
            f"tp_layers.{api}: input shape {jnp.shape(x)} does not fit kernel shard "
            f"{jnp.shape(kernel)}: the input's last dim must equal the kernel's first dim."
        )
    if bias is not None and jnp.shape(bias) != (out,):
        raise ShardingError(
            f"tp_layers.{api}: bias shape {jnp.shape(bias)} must be ({out},) to match the "
            f"kernel shard {jnp.shape(kernel)}."
        )


def column_parallel_dense(
    x: jax.Array,
    kernel_shard: jax.Array,
    bias_shard: jax.Array | None = None,
    *,
    axis: AxisName,
    gather_output: bool = False,
) -> jax.Array:
    """Column-parallel dense layer: ``y = x @ W + b`` with ``W``'s output dim split over ``axis``.

    Collectives: forward none (``gather_output``: one ``all_gather``); backward one ``psum`` of
    the input's cotangent (each device only sees its columns' contribution to ``dx``).

    Args:
      x: ``[..., d_in]``, replicated over ``axis``.
      kernel_shard: ``[d_in, d_out / n]``, this device's columns (spec ``P(None, axis)``).
      bias_shard: optional ``[d_out / n]`` (spec ``P(axis)``).
      axis: the tensor axis name(s).
      gather_output: all-gather the result to ``[..., d_out]`` (replicated).

    Returns:
      ``[..., d_out / n]`` (this device's columns), or ``[..., d_out]`` with ``gather_output``.

    Raises:
      ShardingError: shapes that do not fit; CollectiveError: ``axis`` is not bound.
    """
    _check_dense("column_parallel_dense", x, kernel_shard, bias_shard, kernel_shard.shape[-1])
    axis = _axis_key(axis)
    y = jnp.matmul(_copy(x, axis), kernel_shard)
    if bias_shard is not None:
        y = y + bias_shard
    if gather_output:
        y = _gather(y, axis)
    return y


def row_parallel_dense(
    x_shard: jax.Array,
    kernel_shard: jax.Array,
    bias: jax.Array | None = None,
    *,
    axis: AxisName,
) -> jax.Array:
    """Row-parallel dense layer: ``y = x @ W + b`` with ``W``'s input dim split over ``axis``.

    Each device multiplies its slice of the input features by its rows of ``W``; one ``psum``
    over ``axis`` sums the partial products (forward); the bias is added once, after the sum.
    Backward: no collective (the output's cotangent is already replicated).

    Args:
      x_shard: ``[..., d_in / n]``, this device's input features (e.g. a column-parallel
        layer's output).
      kernel_shard: ``[d_in / n, d_out]``, this device's rows (spec ``P(axis, None)``).
      bias: optional ``[d_out]``, replicated.
      axis: the tensor axis name(s).

    Returns:
      ``[..., d_out]``, replicated over ``axis``.

    Raises:
      ShardingError: shapes that do not fit; CollectiveError: ``axis`` is not bound.
    """
    _check_dense("row_parallel_dense", x_shard, kernel_shard, bias, kernel_shard.shape[-1])
    axis = _axis_key(axis)
    y = _reduce(jnp.matmul(x_shard, kernel_shard), axis)
    if bias is not None:
        y = y + bias
    return y


def _vocab_mask(ids: jax.Array, block: int, axis: AxisName) -> tuple[jax.Array, jax.Array]:
    """(local ids clipped into the shard, mask of ids this device owns)."""
    start = collectives.axis_index(axis) * block
    local = ids - start
    mask = (local >= 0) & (local < block)
    return jnp.where(mask, local, 0), mask


def vocab_parallel_embed(tokens: jax.Array, table_shard: jax.Array, *, axis: AxisName) -> jax.Array:
    """Vocab-parallel embedding lookup: the table's rows (vocab) split over ``axis``.

    Device ``i`` owns ids ``[i * V/n, (i + 1) * V/n)``; it looks up the ids it owns, zeroes the
    others, and one ``psum`` over ``axis`` assembles the embeddings (forward). Backward: each
    device's table gradient lands on its own rows; no collective.

    Args:
      tokens: integer ids ``[...]`` in ``[0, V)``, replicated over ``axis``.
      table_shard: ``[V / n, d]``, this device's rows (spec ``P(axis, None)``).
      axis: the tensor axis name(s).

    Returns:
      ``[..., d]`` embeddings, replicated over ``axis``.

    Raises:
      ShardingError: a table shard that is not rank 2 or non-integer tokens; CollectiveError:
        ``axis`` is not bound.
    """
    if jnp.ndim(table_shard) != 2:
        raise ShardingError(
            f"tp_layers.vocab_parallel_embed: table shard has shape {jnp.shape(table_shard)}; "
            "expected rank 2 [V / n, d]."
        )
    if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
        raise ShardingError(
            f"tp_layers.vocab_parallel_embed: tokens have dtype {jnp.result_type(tokens)}; "
            "expected integer ids."
        )
    axis = _axis_key(axis)
    local, mask = _vocab_mask(tokens, table_shard.shape[0], axis)
    rows = jnp.take(table_shard, local, axis=0)
    rows = jnp.where(mask[..., None], rows, jnp.zeros_like(rows))
    return _reduce(rows, axis)


def vocab_parallel_cross_entropy(
    logits_shard: jax.Array, labels: jax.Array, *, axis: AxisName
) -> jax.Array:
    """Softmax cross-entropy over a vocab split along ``axis``, without gathering the logits.

    Numerically stable: the global max (``pmax`` over ``axis``, not differentiated) is subtracted
    before ``exp``; the sum of exponentials and the target logit are each summed with one
    ``psum``. Computed in float32 (or wider). Backward: no collective; each device's gradient
    is ``softmax - one_hot`` on its own vocab block.

    Args:
      logits_shard: ``[..., V / n]``, this device's vocab block (e.g. a column-parallel LM
        head's output; spec ``P(..., axis)``).
      labels: integer ids ``[...]`` in ``[0, V)``, replicated over ``axis``.
      axis: the tensor axis name(s).

    Returns:
      Per-token loss ``[...]`` (``-log softmax(logits)[label]``), float32, replicated.

    Raises:
      ShardingError: ``labels`` shape not equal to the logits' leading dims; CollectiveError:
        ``axis`` is not bound.
    """
    if jnp.shape(labels) != jnp.shape(logits_shard)[:-1]:
        raise ShardingError(
            f"tp_layers.vocab_parallel_cross_entropy: labels shape {jnp.shape(labels)} must "
            f"equal the logits' leading dims {jnp.shape(logits_shard)[:-1]}."
        )
    axis = _axis_key(axis)
    x = logits_shard.astype(jnp.promote_types(logits_shard.dtype, jnp.float32))
    top = collectives.pmax(jnp.max(lax.stop_gradient(x), axis=-1), axis)
    shifted = x - top[..., None]
    local, mask = _vocab_mask(labels, x.shape[-1], axis)
    target = jnp.take_along_axis(shifted, local[..., None], axis=-1)[..., 0]
    target = _reduce(jnp.where(mask, target, jnp.zeros_like(target)), axis)
    sum_exp = _reduce(jnp.sum(jnp.exp(shifted), axis=-1), axis)
    return jnp.log(sum_exp) - target
