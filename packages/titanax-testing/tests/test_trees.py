"""Tree assertions report structure differences first, then the failing leaves by path."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from titanax.testing import assert_same_structure, assert_trees_allclose, assert_trees_equal


def test_equal_trees_pass() -> None:
    tree = {"a": jnp.arange(3.0), "b": [np.float32(1.0), (jnp.ones((2, 2)), None)]}
    assert_trees_equal(tree, tree)
    assert_trees_allclose(tree, tree)


def test_structure_is_checked_before_leaves() -> None:
    with pytest.raises(
        AssertionError, match=r"missing paths \[\"\['c'\]\"\], unexpected paths \[\]"
    ):
        assert_same_structure({"a": 1, "b": 2}, {"a": 1, "b": 2, "c": 3})
    with pytest.raises(AssertionError, match=r"node types differ"):
        assert_same_structure((1, 2), [1, 2])


def test_leaf_differences_name_paths() -> None:
    a = {"w": jnp.array([1.0, 2.0]), "b": jnp.zeros(2)}
    b = {"w": jnp.array([1.0, 2.5]), "b": jnp.zeros(2)}
    with pytest.raises(
        AssertionError, match=r"1 of 2 leaves not equal:\n  \['w'\]: max \|diff\| 5.000e-01"
    ):
        assert_trees_equal(a, b)
    assert_trees_allclose(a, b, rtol=0.25)
    with pytest.raises(
        AssertionError, match=r"\['w'\]: max \|diff\| 5.000e-01, max rel diff 2.000e-01"
    ):
        assert_trees_allclose(a, b, rtol=0.1)


def test_shape_and_dtype_mismatch() -> None:
    with pytest.raises(AssertionError, match=r"<root>: shape \(2,\) != \(3,\)"):
        assert_trees_equal(jnp.zeros(2), jnp.zeros(3))
    with pytest.raises(AssertionError, match=r"<root>: dtype float32 != int32"):
        assert_trees_equal(jnp.zeros(2), jnp.zeros(2, jnp.int32))


def test_nan_equals_nan() -> None:
    assert_trees_equal(jnp.array([np.nan]), jnp.array([np.nan]))
