"""Classification and language-model losses: softmax cross-entropy with integer labels.

``cross_entropy`` returns the *sum* of per-token losses and the count of valid positions, so a
caller that accumulates over microbatches (or shards the batch) adds sums and counts and divides
once: the mean over all valid tokens, independent of how the batch was split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from titanax.models._errors import ModelError
from titanax.models._gpt import Remat, gpt_apply
from titanax.models._gpt_config import GPTConfig
from titanax.models._gpt_params import DTypeLike

__all__ = ["cross_entropy", "gpt_loss", "softmax_cross_entropy_int"]


def softmax_cross_entropy_int(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example ``-log softmax(logits)[label]``, computed in float32.

    Same contract as ``optax.softmax_cross_entropy_with_integer_labels``.

    Args:
      logits: ``[..., num_classes]`` any float dtype (cast to float32).
      labels: ``[...]`` integer class ids in ``[0, num_classes)`` (out-of-range ids give
        meaningless values; they are not checked, as values are traced).

    Returns:
      ``[...]`` float32 losses.

    Raises:
      ModelError: ``labels.shape != logits.shape[:-1]`` or labels are not integers.
    """
    api = "softmax_cross_entropy_int"
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ModelError(
            f"{api}: labels have shape {tuple(labels.shape)} but logits {tuple(logits.shape)}; "
            "labels must be logits.shape[:-1] (one class id per row of logits)."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ModelError(f"{api}: labels must be integer class ids, got dtype {labels.dtype}.")
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    # A one-hot contraction rather than a gather: with the class dim sharded (a column-parallel
    # LM head) it partitions into a local product and a sum, where XLA's SPMD partitioner
    # aborts on the gather inside pipelined, data-sharded steps.
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    picked = jnp.sum(logits * one_hot, axis=-1)
    return log_z - picked


def cross_entropy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Sum of token cross-entropies over valid positions, and the number of valid positions.

    Args:
      logits: ``[..., vocab]`` (e.g. ``[batch, seq, vocab]``), any float dtype; the loss is
        computed in float32.
      labels: ``[...]`` integer target ids.
      mask: optional ``[...]`` bool (or 0/1 numbers): ``True`` marks positions that count.
        Non-bool masks are used as float32 weights (the "count" is then their sum).

    Returns:
      ``(sum_loss, count)``: float32 scalars. The mean loss is ``sum_loss / count``; with
      accumulation, divide the summed sums by the summed counts.

    Raises:
      ModelError: shapes that do not line up, non-integer labels.

    Example:
      >>> logits = jnp.zeros((2, 3, 5)); labels = jnp.zeros((2, 3), jnp.int32)
      >>> s, n = jax.jit(cross_entropy)(logits, labels)
      >>> round(float(s / n), 4)  # log(5)
      1.6094
    """
    losses = softmax_cross_entropy_int(logits, labels)
    if mask is None:
        return jnp.sum(losses), jnp.asarray(losses.size, jnp.float32)
    if tuple(mask.shape) != tuple(labels.shape):
        raise ModelError(
            f"cross_entropy: mask has shape {tuple(mask.shape)} but labels "
            f"{tuple(labels.shape)}; pass one mask entry per label."
        )
    weights = mask.astype(jnp.float32)
    return jnp.sum(jnp.where(weights != 0, losses * weights, 0.0)), jnp.sum(weights)


def gpt_loss(
    params: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    *,
    config: GPTConfig,
    key: jax.Array | None = None,
    train: bool = False,
    compute_dtype: DTypeLike = None,
    remat: Remat | None = None,
) -> jax.Array:
    """Mean next-token cross-entropy of the GPT over a batch (for ``jax.value_and_grad``).

    ``sum_loss / count`` of :func:`cross_entropy` over :func:`gpt_apply`'s logits. To
    accumulate exactly over microbatches of unequal valid-token counts, call ``gpt_apply`` and
    ``cross_entropy`` yourself and divide once.

    Args:
      params: GPT parameters (either layout).
      batch: ``{"inputs": [batch, seq] int32, "targets": [batch, seq] int32}`` and optionally
        ``"mask": [batch, seq]`` (bool; ``False`` positions do not count, e.g. padding).
      config: the model.
      key: dropout key (used with ``train=True``).
      train: enable dropout.
      compute_dtype: see :func:`gpt_apply`; the loss is float32.
      remat: see :func:`gpt_apply` (activation checkpointing per layer).

    Returns:
      The mean loss, a float32 scalar (0 when no position is valid).

    Raises:
      ModelError: a missing ``"inputs"``/``"targets"`` entry, targets whose shape differs from
        inputs, and everything :func:`gpt_apply` raises.
    """
    missing = [k for k in ("inputs", "targets") if k not in batch]
    if missing:
        raise ModelError(
            f"gpt_loss: batch is missing {missing}; it needs 'inputs' and 'targets' "
            f"([batch, seq] int32) and optionally 'mask'. Got keys {sorted(batch)}."
        )
    inputs, targets = batch["inputs"], batch["targets"]
    if tuple(targets.shape) != tuple(inputs.shape):
        raise ModelError(
            f"gpt_loss: targets have shape {tuple(targets.shape)} but inputs "
            f"{tuple(inputs.shape)}; they must match (targets are the inputs shifted by one)."
        )
    logits = gpt_apply(
        params,
        inputs,
        config=config,
        key=key,
        train=train,
        compute_dtype=compute_dtype,
        remat=remat,
    )
    total, count = cross_entropy(logits, targets, batch.get("mask"))
    return total / jnp.where(count > 0, count, 1.0)
