"""Pytree assertions that compare structure first, then every leaf, naming paths on failure."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["assert_same_structure", "assert_trees_allclose", "assert_trees_equal"]


def _flatten(tree: Any) -> tuple[list[str], list[Any], Any]:
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [jax.tree_util.keystr(path) for path, _ in leaves_with_paths]
    return paths, [leaf for _, leaf in leaves_with_paths], treedef


def assert_same_structure(actual: Any, expected: Any) -> None:
    """Asserts two pytrees have the same structure, listing missing and unexpected leaf paths.

    Raises:
      AssertionError: the tree definitions differ; the message lists the paths only in one tree,
        or the two tree definitions when the paths agree but node types differ.
    """
    a_paths, _, a_def = _flatten(actual)
    e_paths, _, e_def = _flatten(expected)
    if a_def == e_def:
        return
    missing = [p for p in e_paths if p not in set(a_paths)]
    extra = [p for p in a_paths if p not in set(e_paths)]
    if missing or extra:
        raise AssertionError(
            f"pytree structures differ: missing paths {missing[:20]}, unexpected paths {extra[:20]}"
        )
    raise AssertionError(f"pytree node types differ:\n  actual:   {a_def}\n  expected: {e_def}")


def _compare(actual: Any, expected: Any, *, rtol: float, atol: float, exact: bool) -> None:
    assert_same_structure(actual, expected)
    paths, a_leaves, _ = _flatten(actual)
    _, e_leaves, _ = _flatten(expected)
    failures: list[str] = []
    for path, a, e in zip(paths, a_leaves, e_leaves, strict=True):
        a_np = np.asarray(jax.device_get(a))
        e_np = np.asarray(jax.device_get(e))
        if a_np.shape != e_np.shape:
            failures.append(f"{path or '<root>'}: shape {a_np.shape} != {e_np.shape}")
            continue
        if a_np.dtype != e_np.dtype:
            failures.append(f"{path or '<root>'}: dtype {a_np.dtype} != {e_np.dtype}")
            continue
        if exact:
            ok = np.array_equal(a_np, e_np, equal_nan=a_np.dtype.kind in "fc")
        else:
            ok = np.allclose(
                a_np.astype(np.float64),
                e_np.astype(np.float64),
                rtol=rtol,
                atol=atol,
                equal_nan=True,
            )
        if not ok:
            if a_np.dtype.kind in "fciu" and a_np.size:
                diff = np.abs(a_np.astype(np.float64) - e_np.astype(np.float64))
                scale = np.maximum(np.abs(e_np.astype(np.float64)), np.finfo(np.float64).tiny)
                nans = int(np.sum(np.isnan(a_np) != np.isnan(e_np)))
                finite = ~np.isnan(diff)
                worst = float(diff[finite].max()) if finite.any() else float("nan")
                worst_rel = float((diff / scale)[finite].max()) if finite.any() else float("nan")
                failures.append(
                    f"{path or '<root>'}: max |diff| {worst:.3e}, max rel diff "
                    f"{worst_rel:.3e} (rtol={rtol}, atol={atol})"
                    + (f", NaN in one tree only at {nans} element(s)" if nans else "")
                )
            else:
                failures.append(f"{path or '<root>'}: values differ")
    if failures:
        kind = "equal" if exact else "close"
        raise AssertionError(
            f"{len(failures)} of {len(paths)} leaves not {kind}:\n  " + "\n  ".join(failures)
        )


def assert_trees_equal(actual: Any, expected: Any) -> None:
    """Asserts equal structure, then bit-equal leaves (same shape, dtype and values; NaN == NaN).

    Raises:
      AssertionError: naming each differing leaf path with its shape, dtype or value difference.
    """
    _compare(actual, expected, rtol=0.0, atol=0.0, exact=True)


def assert_trees_allclose(
    actual: Any, expected: Any, *, rtol: float = 1e-6, atol: float = 0.0
) -> None:
    """Asserts equal structure, then leaves with equal shape and dtype and values within
    ``|a - e| <= atol + rtol * |e|`` (``numpy.allclose`` in float64; NaN == NaN).

    Raises:
      AssertionError: naming each differing leaf path with its max absolute and relative error.
    """
    _compare(actual, expected, rtol=rtol, atol=atol, exact=False)
