"""Checks shared by the config records and the apply functions: ints, dtypes, parameter shapes.

Every failure raises :class:`~titanax.models.ModelError` with the API, the value received and
the fix. Shapes are checked at trace time (they are static), so a wrong tree fails before XLA
compiles anything.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from titanax.models._errors import ModelError

__all__ = ["check_tree_shapes", "param_dtype", "path_of", "positive_int", "resolve_dtype"]


def positive_int(api: str, name: str, value: object) -> int:
    """``value`` as a Python int; raises unless it is an int (not a bool) and >= 1."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ModelError(f"{api}: {name}={value!r} is a {type(value).__name__}, not an int.")
    if value < 1:
        raise ModelError(f"{api}: {name}={value} must be a positive int (>= 1).")
    return int(value)


def resolve_dtype(api: str, dtype: Any, *, name: str = "compute_dtype") -> np.dtype[Any] | None:
    """``None`` or a floating numpy/JAX dtype (``"bfloat16"``, ``jnp.bfloat16``, ...)."""
    if dtype is None:
        return None
    try:
        resolved: np.dtype[Any] = np.dtype(jax.numpy.dtype(dtype))
    except TypeError:
        raise ModelError(
            f"{api}: {name}={dtype!r} is not a dtype; pass e.g. jnp.float32, jnp.bfloat16 or "
            "'bfloat16' (or None: float32 parameters, or no cast for compute_dtype)."
        ) from None
    if not jax.numpy.issubdtype(resolved, jax.numpy.floating):
        raise ModelError(
            f"{api}: {name}={dtype!r} is not a floating dtype; use float32, bfloat16 or float16."
        )
    return resolved


def param_dtype(api: str, dtype: Any) -> np.dtype[Any]:
    """A floating parameter dtype; ``None`` means float32."""
    resolved = resolve_dtype(api, dtype, name="dtype")
    return np.dtype(np.float32) if resolved is None else resolved


def path_of(key_path: tuple[Any, ...]) -> str:
    """One JAX key path as the "/"-joined string used in error messages (``blocks/0/ln1/scale``)."""
    parts = []
    for entry in key_path:
        if isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(entry.name)
        else:
            parts.append(str(entry))
    return "/".join(parts)


def check_tree_shapes(
    api: str,
    tree: Any,
    expected: Mapping[str, tuple[int, ...]],
    *,
    prefix: str = "",
    leading: int | None = None,
) -> None:
    """Raises unless ``tree`` has exactly the leaf paths of ``expected`` with those shapes.

    Args:
      api: the public function name, for the message.
      tree: a (sub)tree of parameters; leaves need ``.shape``.
      expected: path (relative to ``tree``) -> shape.
      prefix: path of ``tree`` inside the full parameter tree, prepended in messages.
      leading: if not ``None``, every leaf carries one extra leading dim (the stacked layer dim);
        its size must be the same for all leaves, and equal ``leading`` when ``leading > 0``
        (``leading=0`` accepts any common size).
    """
    if not isinstance(tree, Mapping):
        raise ModelError(
            f"{api}: parameters at {prefix or '<root>'!r} must be a dict, got "
            f"{type(tree).__name__}."
        )
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    actual = {path_of(tuple(p)): leaf for p, leaf in flat}
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    where = f"{prefix}/" if prefix else ""
    if missing or unexpected:
        raise ModelError(
            f"{api}: parameter tree does not match the config: missing "
            f"{[where + p for p in missing]}, unexpected {[where + p for p in unexpected]}. "
            "Create parameters with the matching *_init(config, key) (and the same stacked= "
            "layout)."
        )
    if leading is not None:
        flat_rank = {
            where + p: tuple(actual[p].shape)
            for p, shape in expected.items()
            if len(actual[p].shape) != len(shape) + 1
        }
        if flat_rank:
            first = next(iter(flat_rank.items()))
            raise ModelError(
                f"{api}: stacked parameters need a leading [L] layer dim, but "
                f"{len(flat_rank)} leaves lack it (e.g. {first[0]} has shape {first[1]}). Pass "
                "stacked blocks (stack_blocks), or use gpt_block for a single layer."
            )
        leads = {p: int(actual[p].shape[0]) for p in expected}
        counts = collections.Counter(leads.values())
        common = leading if leading else counts.most_common(1)[0][0]
        odd = {where + p: n for p, n in leads.items() if n != common}
        if odd:
            raise ModelError(
                f"{api}: stacked parameters disagree on the leading layer dim: {odd}, but "
                f"{'the config has' if leading else 'the other leaves have'} L={common}. Every "
                "stacked leaf needs the same leading [L] dim (use stack_blocks)."
            )
    for path, shape in expected.items():
        leaf_shape = tuple(getattr(actual[path], "shape", ()))
        want = shape if leading is None else (leaf_shape[0], *shape)
        if leaf_shape != want:
            hint = (
                " It has an extra leading dim: pass one layer (blocks/<i>), or use gpt_blocks "
                "for stacked blocks."
                if leading is None and leaf_shape[1:] == want
                else " Check the config matches the one the parameters were created with."
            )
            raise ModelError(
                f"{api}: parameter {where + path} has shape {leaf_shape}, expected {want} for "
                f"this config.{hint}"
            )
