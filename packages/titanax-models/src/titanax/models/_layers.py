"""The layers the reference models share: dense, layer norm, dropout, dtype casting.

Plain functions over dict parameters (``{"kernel": [d_in, d_out], "bias": [d_out]}``,
``{"scale": [d], "bias": [d]}``); no modules, no state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LN_EPS", "cast", "dense", "dropout", "layer_norm", "lecun_normal_kernels"]

LN_EPS = 1e-5
"""Epsilon added to the variance in :func:`layer_norm` (GPT-2's value)."""


def cast(x: jax.Array, dtype: np.dtype[Any] | None) -> jax.Array:
    """``x`` in ``dtype``, or unchanged when ``dtype`` is ``None``."""
    return x if dtype is None or x.dtype == dtype else x.astype(dtype)


def dense(
    params: Mapping[str, jax.Array], x: jax.Array, *, dtype: np.dtype[Any] | None = None
) -> jax.Array:
    """``x @ kernel + bias`` over the last dim; kernel ``[d_in, d_out]``, bias ``[d_out]`` optional.

    With ``dtype`` the operands are cast first (a bfloat16 matmul); the result has that dtype.
    """
    kernel = cast(params["kernel"], dtype)
    y = jnp.einsum("...i,io->...o", cast(x, dtype), kernel)
    if "bias" in params:
        y = y + cast(params["bias"], dtype)
    return y


def layer_norm(params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    """LayerNorm over the last dim (Ba et al. 2016) with statistics computed in float32.

    Args:
      params: ``{"scale": [d], "bias": [d]}``.
      x: ``[..., d]`` in any float dtype.

    Returns:
      ``[..., d]`` in ``x.dtype``.
    """
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + LN_EPS)
    y = y * params["scale"].astype(jnp.float32) + params["bias"].astype(jnp.float32)
    return y.astype(x.dtype)


def dropout(x: jax.Array, *, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout: zeroes each element with probability ``rate``, scales the rest by
    ``1 / (1 - rate)``. Identity when ``key`` is ``None`` or ``rate == 0``."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


def lecun_normal_kernels(
    key: jax.Array, shapes: Sequence[tuple[int, ...]], *, dtype: Any
) -> list[jax.Array]:
    """Kernels drawn ``normal(0, 1 / fan_in)`` (LeCun normal) from one PRNG draw.

    ``fan_in`` is the product of all dims but the last (``[d_in, d_out]`` dense kernels,
    ``[h, w, c_in, c_out]`` HWIO conv kernels). One ``normal(key, [sum of sizes])`` is cut in
    order, so the compiled init holds a single random-number generator whatever the depth.

    References:
      LeCun et al. 1998, "Efficient BackProp"; ``jax.nn.initializers.lecun_normal`` (the same
      variance, but truncated and drawn per kernel).
    """
    sizes = [math.prod(s) for s in shapes]
    flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
    kernels, offset = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        std = 1.0 / math.sqrt(math.prod(shape[:-1]))
        kernels.append((flat[offset : offset + size].reshape(shape) * std).astype(dtype))
        offset += size
    return kernels
