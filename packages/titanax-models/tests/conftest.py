"""Fixtures for the titanax-models tests: a ``jax.jit`` that compiles fast.

At these tiny shapes XLA's CPU compiler dominates the suite's time (a 2-layer GPT gradient
takes ~5 s to compile on the 2-core CI machine, ~0.7 s with the options below). The options only
change how XLA generates CPU code (optimization level, fusion emitters), not what is computed;
each is probed once and dropped if this jaxlib does not know it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import pytest

_FAST_OPTIONS: dict[str, Any] = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


@functools.cache
def _supported_options() -> dict[str, Any]:
    lowered = jax.jit(lambda x: x + 1).lower(jnp.zeros((), jnp.float32))
    supported = {}
    for name, value in _FAST_OPTIONS.items():
        try:
            lowered.compile(compiler_options={name: value})
        except jax.errors.JaxRuntimeError:  # "No such compile option" on another jaxlib
            continue
        supported[name] = value
    return supported


@pytest.fixture(scope="session")
def fast_jit() -> Callable[..., Any]:
    """``fast_jit(fun, **jit_kwargs)``: ``jax.jit`` with the fast-compile options."""
    options = _supported_options()

    def jit(fun: Callable[..., Any], **kwargs: Any) -> Any:
        return jax.jit(fun, compiler_options=options, **kwargs)

    return jit
