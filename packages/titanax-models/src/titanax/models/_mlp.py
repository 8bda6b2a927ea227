"""``MLPConfig``, ``mlp_init``, ``mlp_apply``: a multi-layer perceptron for tests and examples."""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import jax
import jax.numpy as jnp

from titanax.models._checks import check_tree_shapes, param_dtype, positive_int, resolve_dtype
from titanax.models._errors import ModelError
from titanax.models._layers import dense, lecun_normal_kernels

__all__ = ["Activation", "MLPConfig", "mlp_apply", "mlp_init"]

Activation: TypeAlias = Literal["relu", "tanh", "gelu"]

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
}


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class MLPConfig:
    """A multi-layer perceptron ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    Args:
      sizes: ``(in, hidden..., out)``: at least two positive ints; ``len(sizes) - 1`` dense
        layers.
      activation: ``"relu"``, ``"tanh"`` or ``"gelu"`` (tanh approximation), applied after every
        layer but the last (which returns raw outputs / logits).

    Raises:
      ModelError: fewer than two sizes, a size that is not a positive int, an unknown
        activation.

    Example:
      >>> MLPConfig(sizes=(64, 256, 10)).num_layers
      2
    """

    sizes: tuple[int, ...]
    activation: Activation = "relu"

    def __post_init__(self) -> None:
        api = "MLPConfig"
        sizes = self.sizes
        if isinstance(sizes, str) or not isinstance(sizes, Sequence) or len(sizes) < 2:
            raise ModelError(
                f"{api}: sizes={sizes!r} must be a sequence (in, hidden..., out) of at least "
                "two sizes, e.g. (64, 256, 10)."
            )
        sizes = tuple(positive_int(api, f"sizes[{i}]", s) for i, s in enumerate(sizes))
        object.__setattr__(self, "sizes", sizes)
        if self.activation not in _ACTIVATIONS:
            raise ModelError(
                f"{api}: activation={self.activation!r} is not one of {sorted(_ACTIVATIONS)}."
            )

    @property
    def num_layers(self) -> int:
        """Number of dense layers, ``len(sizes) - 1``."""
        return len(self.sizes) - 1


def _shapes(config: MLPConfig) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (d_in, d_out) in enumerate(itertools.pairwise(config.sizes)):
        shapes[f"layers/{i}/kernel"] = (d_in, d_out)
        shapes[f"layers/{i}/bias"] = (d_out,)
    return shapes


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def _init(key: jax.Array, *, config: MLPConfig, dtype: Any) -> dict[str, Any]:
    shapes = list(itertools.pairwise(config.sizes))
    kernels = lecun_normal_kernels(key, shapes, dtype=dtype)
    return {
        "layers": [
            {"kernel": kernel, "bias": jnp.zeros((shape[1],), dtype)}
            for kernel, shape in zip(kernels, shapes, strict=True)
        ]
    }


def mlp_init(config: MLPConfig, key: jax.Array, *, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Creates MLP parameters ``{"layers": [{"kernel": [d_in, d_out], "bias": [d_out]}, ...]}``.

    Kernels are LeCun normal, ``normal(0, 1 / d_in)``, cut from one PRNG draw; biases are zero.
    Runs as one jitted program (cached per config and dtype).

    Args:
      config: the model.
      key: a PRNG key.
      dtype: parameter dtype.

    Returns:
      The parameter tree; paths ``layers/<i>/kernel``, ``layers/<i>/bias``.

    Raises:
      ModelError: ``config`` is not an ``MLPConfig``; ``dtype`` is not a floating dtype.
    """
    if not isinstance(config, MLPConfig):
        raise ModelError(f"mlp_init: config must be an MLPConfig, got {type(config).__name__}.")
    dtype = param_dtype("mlp_init", dtype)
    params: dict[str, Any] = _init(key, config=config, dtype=dtype)
    return params


def mlp_apply(
    params: Mapping[str, Any], x: jax.Array, *, config: MLPConfig, compute_dtype: Any = None
) -> jax.Array:
    """Runs the MLP: ``act(x @ W_0 + b_0)``, ..., ``x @ W_last + b_last``.

    Args:
      params: from :func:`mlp_init`.
      x: ``[..., sizes[0]]`` inputs (usually ``[batch, in]``), float.
      config: the model.
      compute_dtype: dtype of the matmuls (default: no cast).

    Returns:
      ``[..., sizes[-1]]`` float32 outputs.

    Raises:
      ModelError: parameters that do not match the config (path and shapes named), or ``x``
        whose last dim is not ``sizes[0]``.
    """
    api = "mlp_apply"
    check_tree_shapes(api, params, _shapes(config))
    if not x.ndim or x.shape[-1] != config.sizes[0]:
        raise ModelError(
            f"{api}: x has shape {tuple(x.shape)}; its last dim must be sizes[0]={config.sizes[0]}."
        )
    dtype = resolve_dtype(api, compute_dtype)
    act = _ACTIVATIONS[config.activation]
    layers = params["layers"]
    for i, layer in enumerate(layers):
        x = dense(layer, x, dtype=dtype)
        if i < len(layers) - 1:
            x = act(x)
    return x.astype(jnp.float32)
