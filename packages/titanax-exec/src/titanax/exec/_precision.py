"""Mixed-precision policy: parameter, compute and output dtypes, and dynamic loss scaling.

Follows the usual recipe (Micikevicius et al., "Mixed Precision Training", 2018; DeepMind's
``jmp``): master parameters and optimizer state stay in ``param_dtype`` (fp32), the forward and
backward run in ``compute_dtype`` (bf16 or fp16), and with fp16 the loss is multiplied by a
dynamic scale so small gradients survive; a step whose gradients are not finite is skipped and
the scale halved, and after ``growth_interval`` finite steps the scale doubles.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp

from titanax.exec._errors import ExecError

__all__ = ["LossScale", "Precision"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _dtype_name(value: Any, field: str) -> str:
    try:
        name = str(jnp.dtype(value).name)
    except TypeError:
        name = str(value)
    if name not in _DTYPES:
        raise ExecError(
            f"Precision: {field}={value!r} is not one of {sorted(_DTYPES)}; use 'float32' for "
            "master weights and 'bfloat16' (or 'float16' with loss scaling) for compute."
        )
    return name


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossScale:
    """Dynamic loss-scale state carried in the TrainState (both leaves replicated scalars).

    Attributes:
      scale: fp32 scalar the loss is multiplied by before differentiation (1.0 when disabled).
      good_steps: int32 count of consecutive steps with finite gradients.
    """

    scale: jax.Array
    good_steps: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Precision:
    """Dtype policy of a training run.

    Args:
      param_dtype: dtype of the master parameters and of the optimizer state ("float32").
      compute_dtype: dtype the loss function sees its parameters in ("float32", "bfloat16",
        "float16"); floating inputs of the batch are cast too.
      output_dtype: dtype of the loss and metrics returned by the step ("float32").
      loss_scaling: "dynamic" or "none"; default "dynamic" exactly when compute is float16.
      initial_scale: first loss scale (fp32), 2**15 by default.
      growth_interval: finite steps after which the scale is multiplied by ``growth_factor``.
      growth_factor: scale multiplier after ``growth_interval`` finite steps (2.0).
      backoff_factor: scale multiplier after a non-finite step (0.5); that update is skipped.

    Raises:
      ExecError: an unknown dtype, non-positive factors or interval, or loss scaling asked for
        with a non-float16 compute dtype and ``loss_scaling="dynamic"`` given explicitly is fine;
        ``float16`` compute with ``loss_scaling="none"`` is refused (gradients underflow).

    Example:
      >>> Precision(compute_dtype="bfloat16")          # bf16 compute, fp32 master weights
      >>> Precision(compute_dtype="float16")           # fp16 with dynamic loss scaling
    """

    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    output_dtype: str = "float32"
    loss_scaling: Literal["dynamic", "none"] | None = None
    initial_scale: float = 2.0**15
    growth_interval: int = 2000
    growth_factor: float = 2.0
    backoff_factor: float = 0.5

    def __post_init__(self) -> None:
        for field in ("param_dtype", "compute_dtype", "output_dtype"):
            object.__setattr__(self, field, _dtype_name(getattr(self, field), field))
        scaling = self.loss_scaling
        if scaling is None:
            scaling = "dynamic" if self.compute_dtype == "float16" else "none"
        if scaling not in ("dynamic", "none"):
            raise ExecError(
                f"Precision: loss_scaling={scaling!r} must be 'dynamic' or 'none' (or omitted)."
            )
        if scaling == "none" and self.compute_dtype == "float16":
            raise ExecError(
                "Precision: compute_dtype='float16' with loss_scaling='none' underflows small "
                "gradients; use loss_scaling='dynamic' or compute_dtype='bfloat16'."
            )
        object.__setattr__(self, "loss_scaling", scaling)
        if not self.initial_scale > 0 or not self.growth_factor > 1:
            raise ExecError(
                f"Precision: initial_scale={self.initial_scale} must be > 0 and growth_factor="
                f"{self.growth_factor} > 1."
            )
        if not 0 < self.backoff_factor < 1:
            raise ExecError(f"Precision: backoff_factor={self.backoff_factor} must be in (0, 1).")
        if isinstance(self.growth_interval, bool) or self.growth_interval < 1:
            raise ExecError(
                f"Precision: growth_interval={self.growth_interval} must be a positive int."
            )

    @property
    def dynamic_scaling(self) -> bool:
        """Whether the loss is scaled dynamically (fp16)."""
        return self.loss_scaling == "dynamic"

    def initial_loss_scale(self) -> LossScale:
        """The loss-scale state of a fresh run (scale 1.0 when scaling is off)."""
        scale = self.initial_scale if self.dynamic_scaling else 1.0
        return LossScale(
            scale=jnp.asarray(scale, jnp.float32), good_steps=jnp.asarray(0, jnp.int32)
        )

    def _cast(self, tree: Any, dtype: str) -> Any:
        target = _DTYPES[dtype]

        def cast(x: Any) -> Any:
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
                return x.astype(target)
            return x

        return jax.tree.map(cast, tree)

    def cast_to_param(self, tree: Any) -> Any:
        """Casts floating leaves of ``tree`` to ``param_dtype``; other leaves unchanged."""
        return self._cast(tree, self.param_dtype)

    def cast_to_compute(self, tree: Any) -> Any:
        """Casts floating leaves of ``tree`` to ``compute_dtype``; other leaves unchanged."""
        return self._cast(tree, self.compute_dtype)

    def cast_to_output(self, tree: Any) -> Any:
        """Casts floating leaves of ``tree`` to ``output_dtype``; other leaves unchanged."""
        return self._cast(tree, self.output_dtype)

    def update_loss_scale(self, state: LossScale, finite: jax.Array) -> LossScale:
        """The next loss-scale state after a step whose gradients were ``finite`` (bool scalar).

        Non-finite: scale × backoff, counter reset. Finite: counter + 1, and after
        ``growth_interval`` finite steps scale × growth and counter reset. Unchanged when
        scaling is off.
        """
        if not self.dynamic_scaling:
            return state
        good = jnp.where(finite, state.good_steps + 1, 0)
        grow = good >= self.growth_interval
        scale = jnp.where(
            finite,
            jnp.where(grow, state.scale * self.growth_factor, state.scale),
            jnp.maximum(state.scale * self.backoff_factor, 1.0),
        )
        return LossScale(
            scale=scale.astype(jnp.float32),
            good_steps=jnp.where(grow, 0, good).astype(jnp.int32),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record of the policy (for configs and checkpoint metadata)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
