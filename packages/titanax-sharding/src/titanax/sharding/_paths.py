"""Parameter paths: every leaf's key path joined with ``"/"``.

``{"blocks": [{"attn": {"q": {"kernel": w}}}]}`` has the path ``"blocks/0/attn/q/kernel"``. The
same rendering applies to every pytree JAX can flatten with paths: dicts (keys), lists and tuples
(indices), NamedTuples and registered dataclasses (field names), Flax NNX ``nnx.State`` (module
attribute names; the ``value`` field of an ``nnx.Variable`` is not part of the path) and Linen
variable dicts (``"params/Dense_0/kernel"``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from titanax.sharding._errors import ShardingError

__all__ = ["flatten_with_paths", "leaf_shape_dtype", "path_str", "tree_paths"]


def _key_str(key: Any) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return str(key.name)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_str(key_path: Sequence[Any]) -> str:
    """Renders one JAX key path as ``"a/0/b"``.

    ``DictKey`` gives the key, ``SequenceKey`` the index, ``GetAttrKey`` the attribute name and
    ``FlattenedIndexKey`` the index — without brackets, dots or quotes. Other key types render
    with ``str``.

    Args:
      key_path: a key path as produced by ``jax.tree_util.tree_flatten_with_path``.

    Returns:
      The entries joined with ``"/"``; ``""`` for the root (a tree that is a single leaf).

    Example:
      >>> import jax
      >>> [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path({"a": [1, 2]})[0]]
      ['a/0', 'a/1']
    """
    return "/".join(_key_str(k) for k in key_path)


def _variable_types() -> tuple[type, ...]:
    """Flax NNX variable classes, if Flax NNX is imported (no import of Flax otherwise)."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None:
        return ()
    # vars(), not getattr: newer Flax warns on the removed VariableState alias.
    found = [vars(nnx).get(name) for name in ("Variable", "VariableState")]
    return tuple(t for t in found if isinstance(t, type))


def flatten_with_paths(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    """Flattens ``tree`` into ``(path, leaf)`` pairs in ``jax.tree.leaves`` order, and its treedef.

    A Flax NNX variable that holds a single array contributes the variable's path
    (``".../kernel"``), not ``".../kernel/value"``.
    """
    variables = _variable_types()
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if not variables:
        pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
        return [(path_str(kp), leaf) for kp, leaf in pairs], treedef
    out: list[tuple[str, Any]] = []
    outer = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, variables))[
        0
    ]
    for kp, node in outer:
        if isinstance(node, variables):
            inner = jax.tree_util.tree_flatten_with_path(node)[0]
            if len(inner) == 1:
                out.append((path_str(kp), inner[0][1]))
            else:
                out.extend((path_str((*kp, *ikp)), leaf) for ikp, leaf in inner)
        else:
            out.append((path_str(kp), node))
    if len(out) != len(leaves):  # pragma: no cover - defensive: flattening must agree
        raise RuntimeError("tree_paths: flattening by variables disagrees with jax.tree.leaves")
    return out, treedef


def tree_paths(tree: Any) -> list[str]:
    """Returns the ``"/"``-joined path of every leaf of ``tree``, in ``jax.tree.leaves`` order.

    Args:
      tree: any pytree: dicts, lists, tuples, NamedTuples, registered dataclasses, Flax NNX
        ``nnx.State`` (from ``nnx.split(model)``) or Linen ``{"params": ...}`` dicts.

    Returns:
      One path per leaf, e.g. ``["blocks/0/attn/q/kernel", ...]``.

    Example:
      >>> tree_paths({"blocks": [{"w": 1.0}, {"w": 2.0}], "head": (3.0,)})
      ['blocks/0/w', 'blocks/1/w', 'head/0']
    """
    return [path for path, _ in flatten_with_paths(tree)[0]]


def leaf_shape_dtype(leaf: Any, *, path: str = "") -> tuple[tuple[int, ...], np.dtype[Any] | Any]:
    """``(shape, dtype)`` of an array-like leaf (``jax.Array``, ``np.ndarray``,
    ``jax.ShapeDtypeStruct``) or a Python number.

    Raises:
      ShardingError: the leaf is not numeric (a string, an arbitrary object), naming ``path``.
    """
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    if shape is None or dtype is None:
        arr = np.asarray(leaf)
        if arr.dtype.kind not in "biufc":
            raise ShardingError(
                f"leaf {path or '<root>'!r} is {type(leaf).__name__} {leaf!r}, not an array or a "
                "number; parameter and batch trees hold arrays (or jax.ShapeDtypeStruct)."
            )
        return tuple(int(d) for d in arr.shape), arr.dtype
    return tuple(int(d) for d in shape), dtype
