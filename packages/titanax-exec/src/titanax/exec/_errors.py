"""Errors of ``titanax.exec``; all derive from :class:`titanax.mesh.TitanaxError`."""

from __future__ import annotations

from titanax.mesh import TitanaxError

__all__ = ["ExecError", "NonFiniteError", "RecompileError", "StateError"]


class ExecError(TitanaxError, ValueError):
    """A step, precision policy, batch or option given to the Engine is invalid.

    Raised for batches whose shapes do not fit the plan, unknown option values, loss functions
    that return the wrong thing, and steps that return something other than ``(state, metrics)``.
    """


class StateError(TitanaxError, TypeError):
    """A :class:`~titanax.exec.TrainState` was built or changed inconsistently (structure or
    dtype of a leaf changed, an unknown PRNG stream was asked for)."""


class RecompileError(TitanaxError, RuntimeError):
    """A compiled step was traced again in strict mode; the message gives the reason (which
    argument's shape, dtype or sharding changed)."""


class NonFiniteError(TitanaxError, FloatingPointError):
    """The loss or gradients became NaN/Inf and the NaN policy is ``"raise"``; the message names
    the step window and the metric."""
