"""Activation checkpointing (rematerialization) policies.

A policy says which intermediate values a block keeps for the backward pass; the rest are
recomputed. Apply it per repeated block (the layer inside a ``scan``), which is where remat
saves memory: ``block = remat(block_fn, "full")``. The Engine gives each step a policy
(``step_fn(remat=...)``) and exposes it as ``state.remat``.

References:
  ``jax.checkpoint`` and ``jax.checkpoint_policies``; Chen et al., "Training Deep Nets with
  Sublinear Memory Cost" (2016).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias, TypeVar

import jax

from titanax.exec._errors import ExecError

__all__ = ["RematPolicy", "checkpoint_policy", "normalize_remat", "remat"]

RematPolicy: TypeAlias = str | tuple[str, ...] | None
"""``None``/``"none"`` (save everything), ``"full"`` (save nothing, recompute the block), a tuple
of names (save only values named with ``jax.ad_checkpoint.checkpoint_name``), or the string
``"save_only:name1,name2"`` (the same, as it comes from a YAML config)."""

F = TypeVar("F", bound=Callable[..., Any])


def normalize_remat(policy: RematPolicy | Sequence[str]) -> str | tuple[str, ...] | None:
    """Returns ``None``, ``"full"`` or a tuple of names for any accepted spelling.

    Raises:
      ExecError: an unknown policy string or a name list that is empty or not strings.
    """
    if policy is None or policy == "none":
        return None
    if policy == "full":
        return "full"
    if isinstance(policy, str):
        if policy.startswith("save_only:"):
            names = tuple(n.strip() for n in policy.removeprefix("save_only:").split(",") if n)
            if names:
                return names
        raise ExecError(
            f"remat policy {policy!r} is not one of None, 'none', 'full', "
            "'save_only:<name>,<name>' or a tuple of checkpoint names."
        )
    names = tuple(policy)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ExecError(
            f"remat policy {policy!r}: a save-only policy needs a non-empty sequence of "
            "checkpoint_name strings, e.g. ('attn_out', 'mlp_hidden')."
        )
    return names


def checkpoint_policy(policy: RematPolicy) -> Callable[..., Any] | None:
    """The ``jax.checkpoint`` policy for ``policy`` (``None`` means: do not checkpoint)."""
    normalized = normalize_remat(policy)
    if normalized is None:
        return None
    policy_fn: Callable[..., Any]
    if normalized == "full":
        policy_fn = jax.checkpoint_policies.nothing_saveable
    else:
        policy_fn = jax.checkpoint_policies.save_only_these_names(*normalized)
    return policy_fn


def remat(fn: F, policy: RematPolicy) -> F:
    """Wraps ``fn`` (one repeated block) with ``jax.checkpoint`` under ``policy``.

    Args:
      fn: the block function, e.g. ``(params, x) -> x`` of one transformer layer.
      policy: see :data:`RematPolicy`; ``None`` returns ``fn`` unchanged.

    Returns:
      A function with the same signature and values; its backward recomputes what the policy
      does not save.

    Raises:
      ExecError: an unknown policy.
    """
    normalized = normalize_remat(policy)
    if normalized is None:
        return fn
    return jax.checkpoint(fn, policy=checkpoint_policy(normalized))  # type: ignore[return-value]
