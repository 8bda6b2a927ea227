"""Target trees for restores: their checks, and their leaf-by-leaf comparison with a saved tree."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from titanax.io._errors import CheckpointError
from titanax.io._paths import flat_with_paths, format_shape

__all__ = [
    "LeafSpec",
    "TreeDiff",
    "abstract_target",
    "diff_trees",
    "leaf_spec",
    "recorded_tree",
    "saved_leaf_specs",
]

LeafSpec = tuple[tuple[int, ...], str]
"""``(shape, dtype name)`` of one leaf."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TreeDiff:
    """How a target tree differs from a saved one; empty when they match leaf for leaf.

    Attributes:
      missing: ``(path, shape, dtype)`` of target leaves the checkpoint does not have.
      unexpected: ``(path, shape, dtype)`` of saved leaves the target does not have.
      shape_changes: ``(path, saved shape, target shape)``.
      dtype_changes: ``(path, saved dtype, target dtype)``.
    """

    missing: tuple[tuple[str, tuple[int, ...], str], ...] = ()
    unexpected: tuple[tuple[str, tuple[int, ...], str], ...] = ()
    shape_changes: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    dtype_changes: tuple[tuple[str, str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shape_changes or self.dtype_changes)

    def lines(self, *, limit: int = 40) -> list[str]:
        """One ``"- ..."`` line per difference (at most ``limit`` per kind)."""
        out: list[str] = []

        def add(title: str, rows: list[str]) -> None:
            if not rows:
                return
            out.append(f"- {title} ({len(rows)}):")
            out.extend(f"    {r}" for r in rows[:limit])
            if len(rows) > limit:
                out.append(f"    ... and {len(rows) - limit} more")

        add(
            "missing in the checkpoint (the target has them)",
            [f"{p}  {format_shape(s)} {d}" for p, s, d in self.missing],
        )
        add(
            "unexpected in the checkpoint (the target lacks them)",
            [f"{p}  {format_shape(s)} {d}" for p, s, d in self.unexpected],
        )
        add(
            "shape differs (checkpoint vs target)",
            [f"{p}: {format_shape(a)} vs {format_shape(b)}" for p, a, b in self.shape_changes],
        )
        add(
            "dtype differs (checkpoint vs target)",
            [f"{p}: {a} vs {b}" for p, a, b in self.dtype_changes],
        )
        return out


def leaf_spec(leaf: Any) -> LeafSpec:
    """``(shape, dtype name)`` of an array-like leaf or Orbax ``ArrayMetadata``."""
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    if shape is None or dtype is None:
        arr = np.asarray(leaf)
        shape, dtype = arr.shape, arr.dtype
    return tuple(int(d) for d in shape), str(np.dtype(dtype))


def diff_trees(saved: Mapping[str, LeafSpec], target: Mapping[str, LeafSpec]) -> TreeDiff:
    """Compares ``{path: (shape, dtype)}`` of a checkpoint with that of a target tree."""
    missing = tuple((p, *target[p]) for p in target if p not in saved)
    unexpected = tuple((p, *saved[p]) for p in saved if p not in target)
    shapes = tuple(
        (p, saved[p][0], target[p][0]) for p in target if p in saved and saved[p][0] != target[p][0]
    )
    dtypes = tuple(
        (p, saved[p][1], target[p][1]) for p in target if p in saved and saved[p][1] != target[p][1]
    )
    return TreeDiff(
        missing=missing,
        unexpected=unexpected,
        shape_changes=shapes,
        dtype_changes=dtypes,
    )


def saved_leaf_specs(tree_metadata: Any) -> dict[str, LeafSpec]:
    """``{path: (shape, dtype)}`` of an Orbax metadata tree (nested dicts and lists)."""
    return {path: leaf_spec(leaf) for path, leaf in flat_with_paths(tree_metadata)}


def recorded_tree(meta: Mapping[str, Any]) -> dict[str, LeafSpec] | None:
    """``{path: (shape, dtype)}`` from the ``tree`` key of a checkpoint's JSON metadata (written
    by :class:`~titanax.io.OrbaxCheckpointer`), or ``None`` when absent or malformed."""
    tree = meta.get("tree")
    if not isinstance(tree, Mapping):
        return None
    try:
        return {
            str(p): (tuple(int(d) for d in v["shape"]), str(v["dtype"])) for p, v in tree.items()
        }
    except (KeyError, TypeError, ValueError):
        return None


def abstract_target(api: str, target: Any) -> Any:
    """``target`` with every leaf as ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)``."""
    problems: list[str] = []

    def to_abstract(path: str, leaf: Any) -> Any:
        shape = getattr(leaf, "shape", None)
        dtype = getattr(leaf, "dtype", None)
        sharding = getattr(leaf, "sharding", None)
        if shape is None or dtype is None or not isinstance(sharding, jax.sharding.Sharding):
            kind = type(leaf).__name__
            what = "no shape/dtype" if shape is None or dtype is None else "no sharding"
            problems.append(f"{path or '<root>'} ({kind}, {what})")
            return leaf
        return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)

    flat = flat_with_paths(target)
    leaves, treedef = jax.tree_util.tree_flatten(target)
    new = [to_abstract(p, leaf) for (p, _), leaf in zip(flat, leaves, strict=True)]
    if problems:
        raise CheckpointError(
            f"{api}: every target leaf must be a jax.ShapeDtypeStruct or jax.Array with a "
            "sharding (the layout to restore into; P() for scalars and replicated leaves), "
            f"but {len(problems)} are not: {problems[:20]}. Build the target with "
            "titanax.sharding.abstract_state(shapes, mesh, plan.param_specs(...)) or "
            "jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))."
        )
    return jax.tree_util.tree_unflatten(treedef, new)
