"""The JSON metadata stored beside every checkpoint.

:class:`~titanax.io.OrbaxCheckpointer` writes the caller's metadata (the Engine passes the mesh,
the plan and its fingerprint, an optimizer fingerprint, the data position and the resolved
config) together with keys of its own, listed in :data:`RESERVED_KEYS`:

``format_version``
  integer version of this layout (1).
``step``
  the step the checkpoint was saved as.
``wall_time``
  seconds since the epoch when the save started (``time.time()``).
``versions``
  distribution versions: every installed ``titanax*`` distribution, ``jax``, ``jaxlib``,
  ``orbax-checkpoint``, ``numpy`` and ``python``.
``tree``
  ``{path: {"shape": [...], "dtype": "float32"}}`` for every leaf of the saved state, so the
  layout can be checked (:func:`~titanax.io.validate_checkpoint_compatibility`) without
  reading array data.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from titanax.io._errors import CheckpointError
from titanax.io._paths import flat_with_paths

__all__ = [
    "FORMAT_VERSION",
    "KNOWN_KEYS",
    "RESERVED_KEYS",
    "build_metadata",
    "describe_tree",
    "json_safe",
    "library_versions",
]

FORMAT_VERSION = 1
RESERVED_KEYS = ("format_version", "step", "tree", "versions", "wall_time")
"""Keys :class:`~titanax.io.OrbaxCheckpointer` writes itself; callers may not pass them."""

KNOWN_KEYS = (
    "config",
    "data_position",
    "mesh",
    "optimizer_fingerprint",
    "plan",
    "plan_fingerprint",
)
"""Caller keys that :func:`~titanax.io.validate_checkpoint_compatibility` understands."""

_TITANAX_DISTRIBUTIONS = (
    "titanax",
    "titanax-mesh",
    "titanax-sharding",
    "titanax-models",
    "titanax-exec",
    "titanax-pipeline",
    "titanax-io",
    "titanax-cli",
)
_OTHER_DISTRIBUTIONS = ("jax", "jaxlib", "orbax-checkpoint", "numpy")


@functools.cache
def library_versions() -> dict[str, str]:
    """Versions of the installed Titanax distributions, JAX, jaxlib, Orbax, NumPy and Python."""
    versions: dict[str, str] = {}
    for name in (*_TITANAX_DISTRIBUTIONS, *_OTHER_DISTRIBUTIONS):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    versions["python"] = platform.python_version()
    return versions


def json_safe(value: Any, *, where: str, path: str = "metadata") -> Any:
    """Returns ``value`` as plain JSON types (dict, list, str, int, float, bool, None).

    NumPy scalars become Python numbers and tuples become lists; anything else is an error.

    Raises:
      CheckpointError: a non-string dict key, or a value JSON cannot hold (e.g. a
        ``jax.Array``); the message names its path inside the metadata.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CheckpointError(
                    f"{where}: metadata key {key!r} at {path!r} is a {type(key).__name__}; JSON "
                    "object keys must be strings. Convert the key with str()."
                )
            out[key] = json_safe(item, where=where, path=f"{path}/{key}")
        return out
    if isinstance(value, list | tuple):
        return [json_safe(v, where=where, path=f"{path}/{i}") for i, v in enumerate(value)]
    hint = (
        " Fetch it to the host first (int(x) / float(x) / x.tolist())."
        if isinstance(value, jax.Array | np.ndarray)
        else " Use dicts, lists, strings, numbers, booleans and None."
    )
    raise CheckpointError(
        f"{where}: metadata value at {path!r} is a {type(value).__name__}, which JSON cannot "
        f"hold.{hint}"
    )


def describe_tree(state: Any) -> dict[str, dict[str, Any]]:
    """``{path: {"shape": [...], "dtype": "..."}}`` for every array-like leaf of ``state``."""
    out: dict[str, dict[str, Any]] = {}
    for path, leaf in flat_with_paths(state):
        shape = getattr(leaf, "shape", None)
        dtype = getattr(leaf, "dtype", None)
        if shape is None or dtype is None:
            arr = np.asarray(leaf)
            shape, dtype = arr.shape, arr.dtype
        out[path] = {"shape": [int(d) for d in shape], "dtype": str(np.dtype(dtype))}
    return out


def build_metadata(step: int, state: Any, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON stored with ``step``: the caller's ``metadata`` plus the reserved keys.

    Raises:
      CheckpointError: ``metadata`` is not a mapping, uses a reserved key, or holds a value
        JSON cannot represent.
    """
    where = f"OrbaxCheckpointer.save(step={step})"
    if not isinstance(metadata, Mapping):
        raise CheckpointError(
            f"{where}: metadata must be a mapping of JSON values, got {type(metadata).__name__}."
        )
    clash = sorted(k for k in metadata if k in RESERVED_KEYS)
    if clash:
        raise CheckpointError(
            f"{where}: metadata keys {clash} are written by the checkpointer itself (reserved: "
            f"{list(RESERVED_KEYS)}). Rename them or drop them."
        )
    safe = json_safe(metadata, where=where)
    return {
        **safe,
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "wall_time": time.time(),
        "versions": library_versions(),
        "tree": describe_tree(state),
    }
