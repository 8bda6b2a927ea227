"""Runs the docstring examples of every titanax.models module."""

from __future__ import annotations

import doctest
import importlib

import jax
import jax.numpy as jnp
import pytest

import titanax.models

MODULES = [
    "titanax.models._cnn",
    "titanax.models._gpt",
    "titanax.models._gpt_config",
    "titanax.models._gpt_params",
    "titanax.models._losses",
    "titanax.models._mlp",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    names = {n: getattr(titanax.models, n) for n in titanax.models.__all__}
    result = doctest.testmod(
        module,
        extraglobs={"jax": jax, "jnp": jnp, **names},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
