"""Runs the ``Example:`` sections of the public docstrings (on the 8 simulated CPU devices)."""

from __future__ import annotations

import doctest

import pytest

import titanax.io._checkpoint
import titanax.io._loader
import titanax.io._prefetch
import titanax.io._sinks
import titanax.io._token_windows


@pytest.mark.parametrize(
    "module",
    [
        titanax.io._checkpoint,
        titanax.io._loader,
        titanax.io._prefetch,
        titanax.io._sinks,
        titanax.io._token_windows,
    ],
    ids=lambda m: m.__name__,
)
def test_examples_run(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)  # type: ignore[arg-type]
    assert result.attempted > 0
    assert result.failed == 0
