"""Runs the docstring examples of every titanax.sharding module on the 8 simulated devices."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "titanax.sharding._paths",
    "titanax.sharding._rules",
    "titanax.sharding._placement",
    "titanax.sharding._plan",
    "titanax.sharding.tp_rules",
    "titanax.sharding.tp_layers",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
