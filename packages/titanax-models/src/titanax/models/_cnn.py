"""``CNNConfig``, ``cnn_init``, ``cnn_apply``: a small convnet for grayscale digit images.

Made for scikit-learn's 8x8 digits and 28x28 MNIST-style images: ``len(channels)`` blocks of
3x3 convolution (SAME padding) + ReLU + 2x2 max pooling, then a ReLU dense layer of ``hidden``
units and a linear classifier. NHWC layout, ``jax.lax.conv_general_dilated``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from titanax.models._checks import check_tree_shapes, param_dtype, positive_int, resolve_dtype
from titanax.models._errors import ModelError
from titanax.models._layers import cast, dense, lecun_normal_kernels

__all__ = ["CNNConfig", "cnn_apply", "cnn_init"]

KERNEL_SIZE = 3
"""Height and width of every convolution kernel."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CNNConfig:
    """A small convnet for ``[batch, image_size, image_size, 1]`` grayscale images.

    Args:
      image_size: height and width of the (square) images, e.g. 8 (sklearn digits) or 28
        (MNIST); must be at least ``2 ** len(channels)`` (each block halves it, rounding down).
      channels: output channels of each 3x3 convolution block (at least one block).
      num_classes: number of output logits.
      hidden: width of the dense layer before the classifier.

    Raises:
      ModelError: a size that is not a positive int, no conv blocks, or an image too small for
        the number of pooling steps.

    Example:
      >>> CNNConfig(image_size=28).feature_size  # 28 -> 14 -> 7; 7 * 7 * 32
      1568
    """

    image_size: int = 8
    channels: tuple[int, ...] = (16, 32)
    num_classes: int = 10
    hidden: int = 64

    def __post_init__(self) -> None:
        api = "CNNConfig"
        for name in ("image_size", "num_classes", "hidden"):
            object.__setattr__(self, name, positive_int(api, name, getattr(self, name)))
        channels = self.channels
        if isinstance(channels, str) or not isinstance(channels, Sequence) or not channels:
            raise ModelError(
                f"{api}: channels={channels!r} must be a non-empty sequence of channel counts, "
                "one per conv block, e.g. (16, 32)."
            )
        channels = tuple(positive_int(api, f"channels[{i}]", c) for i, c in enumerate(channels))
        object.__setattr__(self, "channels", channels)
        if self.image_size < 2 ** len(channels):
            raise ModelError(
                f"{api}: image_size={self.image_size} is too small for {len(channels)} conv "
                f"blocks; each halves the image, so it needs image_size >= "
                f"{2 ** len(channels)}. Use fewer channels entries or larger images."
            )

    @property
    def feature_size(self) -> int:
        """Length of the flattened features entering ``dense/0``."""
        size = self.image_size
        for _ in self.channels:
            size //= 2
        return size * size * self.channels[-1]


def _shapes(config: CNNConfig) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    c_in = 1
    for i, c_out in enumerate(config.channels):
        shapes[f"conv/{i}/kernel"] = (KERNEL_SIZE, KERNEL_SIZE, c_in, c_out)
        shapes[f"conv/{i}/bias"] = (c_out,)
        c_in = c_out
    dims = (config.feature_size, config.hidden, config.num_classes)
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        shapes[f"dense/{i}/kernel"] = (d_in, d_out)
        shapes[f"dense/{i}/bias"] = (d_out,)
    return shapes


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def _init(key: jax.Array, *, config: CNNConfig, dtype: Any) -> dict[str, Any]:
    shapes = _shapes(config)
    names = [(g, i) for g, n in (("conv", len(config.channels)), ("dense", 2)) for i in range(n)]
    kernels = lecun_normal_kernels(key, [shapes[f"{g}/{i}/kernel"] for g, i in names], dtype=dtype)
    params: dict[str, Any] = {"conv": [], "dense": []}
    for (group, i), kernel in zip(names, kernels, strict=True):
        params[group].append(
            {"kernel": kernel, "bias": jnp.zeros(shapes[f"{group}/{i}/bias"], dtype)}
        )
    return params


def cnn_init(config: CNNConfig, key: jax.Array, *, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Creates the convnet parameters.

    Conv kernels ``[3, 3, c_in, c_out]`` (HWIO) and dense kernels ``[d_in, d_out]`` are LeCun
    normal, ``normal(0, 1 / fan_in)`` with ``fan_in = 3 * 3 * c_in`` or ``d_in``, cut from one
    PRNG draw; biases are zero. Runs as one jitted program (cached per config and dtype).

    Args:
      config: the model.
      key: a PRNG key.
      dtype: parameter dtype.

    Returns:
      ``{"conv": [{"kernel", "bias"}, ...], "dense": [{"kernel", "bias"}, {"kernel", "bias"}]}``;
      paths ``conv/<i>/kernel|bias``, ``dense/<i>/kernel|bias``.

    Raises:
      ModelError: ``config`` is not a ``CNNConfig``; ``dtype`` is not a floating dtype.
    """
    if not isinstance(config, CNNConfig):
        raise ModelError(f"cnn_init: config must be a CNNConfig, got {type(config).__name__}.")
    dtype = param_dtype("cnn_init", dtype)
    params: dict[str, Any] = _init(key, config=config, dtype=dtype)
    return params


def cnn_apply(
    params: Mapping[str, Any], images: jax.Array, *, config: CNNConfig, compute_dtype: Any = None
) -> jax.Array:
    """Classifies images: conv blocks, flatten (row-major over H, W, C), dense, classifier.

    Args:
      params: from :func:`cnn_init`.
      images: ``[batch, image_size, image_size, 1]`` float (NHWC).
      config: the model.
      compute_dtype: dtype of the convolutions and matmuls (default: no cast).

    Returns:
      ``[batch, num_classes]`` float32 logits.

    Raises:
      ModelError: images not ``[batch, image_size, image_size, 1]``; parameters that do not match
        the config.

    References:
      ``jax.lax.conv_general_dilated``, ``jax.lax.reduce_window``; LeCun et al. 1998.
    """
    api = "cnn_apply"
    size = config.image_size
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[1:] != (size, size, 1):
        raise ModelError(
            f"{api}: images have shape {shape}, expected [batch, {size}, {size}, 1] (NHWC, one "
            "grayscale channel); add the channel dim with images[..., None]."
        )
    check_tree_shapes(api, params, _shapes(config))
    dtype = resolve_dtype(api, compute_dtype)
    x = cast(images, dtype)
    for layer in params["conv"]:
        x = jax.lax.conv_general_dilated(
            x,
            cast(layer["kernel"], dtype),
            window_strides=(1, 1),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        x = jax.nn.relu(x + cast(layer["bias"], dtype))
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(dense(params["dense"][0], x, dtype=dtype))
    return dense(params["dense"][1], x, dtype=dtype).astype(jnp.float32)
