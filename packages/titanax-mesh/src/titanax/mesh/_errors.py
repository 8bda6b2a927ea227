"""The root of every Titanax error, and the errors of ``titanax.mesh``.

Every package defines its errors in its own ``_errors.py`` and derives them from
:class:`TitanaxError` plus the built-in exception a caller would naturally catch
(``ValueError`` for a bad value, ``TypeError`` for a bad type, ``RuntimeError`` for a bad state),
so ``except ValueError`` keeps working while ``except TitanaxError`` catches all of ours.
"""

from __future__ import annotations

__all__ = ["CollectiveError", "DistributedError", "MeshError", "TitanaxError"]


class TitanaxError(Exception):
    """Root of every error raised by a Titanax package.

    Messages state the API, the rule that was broken, the values received and the fix.
    """


class MeshError(TitanaxError, ValueError):
    """A :class:`~titanax.mesh.MeshSpec` cannot be built as written.

    Raised for empty or duplicate axis names, more than one ``-1``, zero or negative sizes, a
    shape whose product does not match the device count, unknown devices, and axis types or
    host splits that do not fit the axes.
    """


class CollectiveError(TitanaxError, ValueError):
    """A collective from :mod:`titanax.mesh.collectives` was called with bad arguments.

    Raised for an axis name that is not bound (not a mesh axis of the ``jax.shard_map`` in force),
    a ``perm`` that is not a permutation, or a dimension that does not divide by the axis size.
    """


class DistributedError(TitanaxError, RuntimeError):
    """Multi-process start-up failed or was called in the wrong state.

    Raised when ``initialize_distributed`` is called after the JAX backend was initialized, when
    the coordinator cannot be reached, or when the resulting device count does not match what
    was expected.
    """
