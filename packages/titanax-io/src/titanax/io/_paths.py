"""Leaf paths as Orbax stores them: every key of a JAX key path joined with ``"/"``.

Orbax serializes a pytree as nested dicts and lists keyed by the same names JAX gives the
keys (dict keys, sequence indices, dataclass and NamedTuple field names), so a target tree and a
checkpoint's metadata tree line up leaf by leaf when both are rendered with
``titanax.sharding.path_str`` over plain ``jax.tree_util`` key paths.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any

import jax

from titanax.sharding import path_str

__all__ = ["flat_with_paths", "format_shape", "matches_any", "path_str"]


def flat_with_paths(tree: Any, *, is_leaf: Any = None) -> list[tuple[str, Any]]:
    """``(path, leaf)`` for every leaf of ``tree`` in ``jax.tree.leaves`` order."""
    pairs = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return [(path_str(kp), leaf) for kp, leaf in pairs]


def matches_any(path: str, globs: Iterable[str]) -> bool:
    """Whether ``path`` matches one of ``globs`` (``fnmatch`` rules: ``*`` crosses ``/``)."""
    return any(fnmatch.fnmatchcase(path, g) for g in globs)


def format_shape(shape: Sequence[int]) -> str:
    """``[8, 16]`` style rendering of a shape (``[]`` for a scalar)."""
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"
