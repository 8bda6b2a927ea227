"""``pipeline_value_and_grad``: loss and gradients of a whole model with a pipelined middle.

The model is ``post ∘ blocks ∘ pre``: a pre-stage (e.g. the embedding) run on the full batch
with ``jax.vjp`` outside the pipeline, the stacked blocks run by the compiled schedule
(:func:`make_pipeline`), and a post-stage (final norm, head and loss) on the last virtual
stage inside it. The result has the structure of ``params``, like ``jax.value_and_grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from titanax.pipeline._errors import PipelineError
from titanax.pipeline._executor import Activations, LossFn, PyTree, StageFn, make_pipeline
from titanax.pipeline._schedule import Schedule

__all__ = ["pipeline_value_and_grad"]

PreFn = Callable[[Mapping[str, Any], PyTree], jax.Array]


def _batch_size(tree: PyTree, *, name: str, microbatches: int, api: str) -> int:
    sizes = {
        jax.tree_util.keystr(path) or "<root>": (leaf.shape[0] if leaf.shape else None)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }
    distinct = set(sizes.values())
    if not sizes or None in distinct or len(distinct) != 1:
        raise PipelineError(
            f"{api}: every {name} leaf needs the same leading batch dim; got leading dims {sizes}."
        )
    batch = int(next(iter(distinct)))  # type: ignore[arg-type]
    if batch % microbatches:
        raise PipelineError(
            f"{api}: the {name} batch size {batch} is not divisible by microbatches="
            f"{microbatches}; use a batch size that is a multiple of {microbatches} or another "
            "microbatch count."
        )
    return batch


def _split(x: jax.Array, m: int) -> jax.Array:
    """``[B, ...] -> [m, B/m, ...]``; microbatch ``i`` holds rows ``i, i + m, …`` (strided, so a
    batch sharded over data devices on dim 0 stays sharded on the microbatch rows)."""
    return x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)


def _merge(x: jax.Array) -> jax.Array:
    """Inverse of :func:`_split`."""
    return x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def pipeline_value_and_grad(
    pre_fn: PreFn,
    stage_fn: StageFn,
    post_fn: LossFn,
    *,
    mesh: Mesh,
    schedule: Schedule,
    axis: str = "pipeline",
    blocks_key: str = "blocks",
    bubble_fill: float = 0.0,
    activations: Activations = "recompute",
) -> Callable[[Mapping[str, Any], PyTree, PyTree], tuple[jax.Array, dict[str, Any]]]:
    """Mean loss and gradients of ``post ∘ blocks ∘ pre`` with the blocks pipelined.

    Call the returned function inside your jitted train step, as you would
    ``jax.value_and_grad(loss_fn)``. ``params`` is a mapping: ``params[blocks_key]`` holds the
    stacked blocks (leading ``[L]`` dim sharded over ``axis``, storage order — see
    :func:`to_storage_order`); every other entry (``rest``) is given to ``pre_fn`` and
    ``post_fn`` (so a tied embedding used by both gets the sum of both gradients).

    Steps: ``x = pre_fn(rest, inputs)`` on the full batch under ``jax.vjp``; ``x`` and the
    targets are split into ``m`` microbatches (microbatch ``i`` = rows ``i, i + m, …``); the
    compiled schedule runs the blocks and ``post_fn`` and returns the loss sum, the count, the
    block and ``rest`` gradients and the cotangent of ``x``, which the pre-stage VJP turns into
    ``rest`` gradients. The loss is ``sum(loss_sum) / sum(count)`` and gradients are divided
    by the same count, so they are exactly those of the unpipelined mean loss.

    Args:
      pre_fn: ``pre_fn(rest, inputs) -> x`` ``[B, ...]`` activations (e.g. token + position
        embedding); must treat batch rows independently.
      stage_fn: ``stage_fn(chunk_params, x) -> y`` for one layer chunk (see
        :func:`make_pipeline`).
      post_fn: ``post_fn(rest, y, targets_mb) -> (loss_sum, count)`` per microbatch (e.g.
        final norm, head and summed cross-entropy with the number of tokens).
      mesh: the mesh, with ``axis`` of size ``schedule.stages``; data and tensor axes stay
        automatic.
      schedule: the :class:`Schedule`.
      axis: the pipeline mesh axis.
      blocks_key: key of the stacked blocks in ``params``.
      bubble_fill: see :func:`make_pipeline` (NaN in tests).
      activations: ``"recompute"`` (default) or ``"stash"``: whether each backward recomputes
        the stage forward or applies the residuals its forward stashed; see
        :func:`make_pipeline` for the memory trade-off.

    Returns:
      ``fn(params, inputs, targets) -> (loss, grads)``: ``inputs`` and ``targets`` are trees
      of ``[B, ...]`` leaves with ``B`` divisible by ``schedule.microbatches``; ``loss`` a
      scalar (the mean over ``count``), ``grads`` a dict with the keys of ``params``.

    Raises:
      PipelineError: ``params`` without ``blocks_key``; inputs/targets without a common
        batch dim or one not divisible by ``microbatches`` (the message names both); and
        everything :func:`make_pipeline` raises (e.g. an unknown ``activations``).

    Example:
      >>> fn = pipeline_value_and_grad(embed, blocks_fn, head_loss, mesh=mesh,
      ...                              schedule=build_schedule("1f1b", stages=2, microbatches=4))
      >>> loss, grads = jax.jit(fn)(params, tokens, labels)   # doctest: +SKIP
    """
    pipe = make_pipeline(
        stage_fn,
        post_fn,
        mesh=mesh,
        schedule=schedule,
        axis=axis,
        bubble_fill=bubble_fill,
        activations=activations,
    )
    m = schedule.microbatches
    api = f"pipeline_value_and_grad(schedule={schedule.kind!r}, microbatches={m})"

    def value_and_grad(
        params: Mapping[str, Any], inputs: PyTree, targets: PyTree
    ) -> tuple[jax.Array, dict[str, Any]]:
        if not isinstance(params, Mapping) or blocks_key not in params:
            keys = sorted(params) if isinstance(params, Mapping) else type(params).__name__
            raise PipelineError(
                f"{api}: params must be a mapping with the stacked blocks under "
                f"{blocks_key!r}; got {keys}. Pass blocks_key= the name of the stacked entry."
            )
        _batch_size(inputs, name="inputs", microbatches=m, api=api)
        _batch_size(targets, name="targets", microbatches=m, api=api)
        rest = {k: v for k, v in params.items() if k != blocks_key}
        x, pre_vjp = jax.vjp(lambda r: pre_fn(r, inputs), rest)
        out = pipe(
            params[blocks_key],
            rest,
            _split(x, m),
            jax.tree.map(lambda a: _split(a, m), targets),
        )
        (pre_grads,) = pre_vjp(_merge(out.input_grads).astype(x.dtype))
        rest_grads = jax.tree.map(jnp.add, pre_grads, out.head_grads)
        count = out.count.astype(out.loss_sum.dtype)
        count = jnp.where(count > 0, count, jnp.ones_like(count))
        scale = 1.0 / count

        def mean(g: jax.Array) -> jax.Array:
            return (g * scale).astype(g.dtype)

        grads = {
            k: jax.tree.map(mean, out.stage_grads if k == blocks_key else rest_grads[k])
            for k in params
        }
        return out.loss_sum * scale, grads

    return value_and_grad
