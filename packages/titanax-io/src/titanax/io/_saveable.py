"""Which state leaves a checkpoint can hold, checked before Orbax sees them.

Orbax's ``StandardSave`` stores arrays and numbers. When it meets anything else (a string, a
Python ``complex``, an object array) it raises *after* it has started its background threads
for the step, which then wait five minutes for a directory that is never created — and keep
the interpreter from exiting. So :class:`~titanax.io.OrbaxCheckpointer` checks every leaf
first and refuses the whole save with one message, before anything is started.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from titanax.io._errors import CheckpointError
from titanax.io._paths import flat_with_paths

__all__ = ["check_saveable"]

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


def _array_dtype_ok(dtype: np.dtype[Any]) -> bool:
    """Numbers and booleans, including the ML dtypes of ``ml_dtypes`` (bfloat16, int4, fp8)."""
    return dtype.kind in "biufc" or (dtype.names is None and dtype.type.__module__ == "ml_dtypes")


def _problem(leaf: Any) -> str | None:
    """Why ``leaf`` cannot be saved, or ``None`` when it can."""
    if isinstance(leaf, jax.Array):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            # Orbax could store it, but the recorded tree and restore targets are NumPy dtypes.
            return (
                f"typed PRNG key array {leaf.dtype} (save jax.random.key_data(key), a uint32 "
                "array, and rebuild it with jax.random.wrap_key_data after the restore)"
            )
        if leaf.is_deleted():
            return "jax.Array that was deleted (donated to a jitted call, or .delete())"
        return None  # any other dtype and sharding: Orbax stores jax.Arrays natively
    if isinstance(leaf, np.ndarray | np.generic):
        if _array_dtype_ok(leaf.dtype):
            return None
        return f"{type(leaf).__name__} of dtype {leaf.dtype}"
    if isinstance(leaf, bool | float):
        return None
    if isinstance(leaf, int):
        if _INT64_MIN <= leaf <= _UINT64_MAX:
            return None
        return f"int {leaf} (outside the 64-bit range)"
    text = repr(leaf)
    return f"{type(leaf).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def check_saveable(api: str, state: Any) -> None:
    """Raises when a leaf of ``state`` is not an array or a number.

    Accepted leaves: ``jax.Array`` (any numeric or bool dtype and any sharding, not deleted),
    NumPy arrays and scalars of a numeric or boolean dtype (``complex64`` and ``ml_dtypes``
    such as ``bfloat16``, ``int4`` and ``float8_e4m3fn`` included), Python ``bool``, ``float``
    and ``int`` within 64 bits. ``None`` is an empty subtree (as in ``jax.tree``). Refused:
    strings and bytes (Python or NumPy), Python ``complex``, object, string and datetime
    arrays, larger ints, typed PRNG key arrays, deleted (donated) arrays, and any other
    object.

    Args:
      api: the calling API, for the message (``"OrbaxCheckpointer.save(step=3)"``).
      state: the pytree about to be saved.

    Raises:
      CheckpointError: listing every offending leaf path with its type (at most 20), and the
        fix: convert numbers with ``np.asarray``, move strings and other values into
        ``metadata=``.
    """
    bad = []
    for path, leaf in flat_with_paths(state):
        why = _problem(leaf)
        if why is not None:
            bad.append(f"{path or '<root>'}: {why}")
    if bad:
        shown = bad[:20] + ([f"... and {len(bad) - 20} more"] if len(bad) > 20 else [])
        raise CheckpointError(
            f"{api}: the state must hold arrays and numbers only (jax.Array, NumPy arrays and "
            f"scalars of a numeric or bool dtype, bool, int, float), but {len(bad)} leaves are "
            f"not: {shown}. Nothing was written. Convert numbers with np.asarray(x); put "
            "strings and other values into metadata= (JSON) instead of the state."
        )
