"""A reference executor: the schedule's table walked in plain Python, one stage at a time.

Slow and eager (each op is a small jitted call on one device), with no slots, no SPMD and no
collectives: messages are Python dict entries keyed by (microbatch, chunk), delivered at the end
of the tick that produced them, and a missing or left-over message raises. It checks a
schedule's table independently of the compiled executor and gives the per-tick trace that the
compiled executor's trace must match. Use it in tests, never in training.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from titanax.pipeline._errors import PipelineError
from titanax.pipeline._executor import LossFn, PipelineOutput, PyTree, StageFn
from titanax.pipeline._schedule import Op, Schedule

__all__ = ["reference_pipeline"]


@functools.lru_cache(maxsize=8)
def _jitted_ops(stage_fn: StageFn, loss_fn: LossFn) -> tuple[Any, Any, Any]:
    """Jitted forward / backward / last-stage backward, cached per function pair so repeated
    reference runs (one per test configuration) compile each shape once."""
    forward = jax.jit(stage_fn)

    @jax.jit
    def backward(params: PyTree, x: jax.Array, g: jax.Array) -> tuple[PyTree, jax.Array]:
        _, vjp = jax.vjp(stage_fn, params, x)
        dparams, dx = vjp(g)
        return dparams, dx

    @jax.jit
    def backward_last(
        params: PyTree, head: PyTree, x: jax.Array, target: PyTree
    ) -> tuple[Any, ...]:
        def stage_loss(pr: PyTree, hd: PyTree, x_: jax.Array) -> tuple[jax.Array, jax.Array]:
            loss_sum, n = loss_fn(hd, stage_fn(pr, x_), target)
            return loss_sum, n

        loss, vjp, count = jax.vjp(stage_loss, params, head, x, has_aux=True)
        dparams, dhead, dx = vjp(jnp.ones_like(loss))
        return loss, count, dparams, dhead, dx

    return forward, backward, backward_last


def reference_pipeline(
    stage_fn: StageFn,
    loss_fn: LossFn,
    *,
    schedule: Schedule,
    stage_params: PyTree,
    head_params: PyTree,
    inputs: jax.Array,
    targets: PyTree,
) -> PipelineOutput:
    """Runs one step by walking ``schedule``'s table eagerly, stage by stage.

    Same contract as the function :func:`make_pipeline` returns, except that ``stage_params``
    are in *natural* layer order (virtual stage ``q`` uses layers ``q·c … q·c + c − 1``) and
    everything runs on the default device.

    Args:
      stage_fn: ``stage_fn(chunk_params, x) -> y`` (see :func:`make_pipeline`).
      loss_fn: ``loss_fn(head_params, y, targets_mb) -> (loss_sum, count)``.
      schedule: the :class:`Schedule` to walk.
      stage_params: stacked layers ``[L, ...]`` in natural order.
      head_params: parameters of ``loss_fn``.
      inputs: ``[m, mb, ...]`` stage-0 inputs.
      targets: tree of ``[m, mb, ...]`` leaves.

    Returns:
      :class:`PipelineOutput` with ``stage_grads`` in natural order and ``trace`` an int32
      numpy ``[T, p, 4]`` array (op, microbatch of the stage input, microbatch of the received
      cotangent or ``-1``, chunk; ``-1`` where idle).

    Raises:
      PipelineError: an op finds no message for its microbatch, or messages are left over at
        the end — the table is wrong (a bug in the schedule).
    """
    p, m, v = schedule.stages, schedule.microbatches, schedule.virtual_stages
    n_virtual = p * v
    n_layers = jax.tree.leaves(stage_params)[0].shape[0]
    per_chunk = n_layers // n_virtual

    def chunk_params(q: int) -> PyTree:
        return jax.tree.map(lambda a: a[q * per_chunk : (q + 1) * per_chunk], stage_params)

    def targets_of(i: int) -> PyTree:
        return jax.tree.map(lambda a: a[i], targets)

    forward, backward, backward_last = _jitted_ops(stage_fn, loss_fn)

    stash: list[dict[tuple[int, int], jax.Array]] = [{} for _ in range(p)]
    cotangents: list[dict[tuple[int, int], jax.Array]] = [{} for _ in range(p)]
    grads: list[PyTree] = [None] * n_virtual
    head_grads: PyTree = jax.tree.map(jnp.zeros_like, head_params)
    input_grads: list[jax.Array | None] = [None] * m
    loss_sum: Any = 0.0
    count: Any = 0
    trace = np.full((schedule.num_ticks, p, 4), -1, np.int32)
    trace[..., 0] = Op.IDLE

    def take(
        store: dict[tuple[int, int], jax.Array], key: tuple[int, int], what: str, t: int, s: int
    ) -> jax.Array:
        if key not in store:
            raise PipelineError(
                f"reference_pipeline({schedule.kind!r}, stages={p}, microbatches={m}, "
                f"virtual_stages={v}): tick {t}, stage {s} needs the {what} of microbatch "
                f"{key[0]} for chunk {key[1]}, which has not arrived; the schedule's table is "
                "wrong."
            )
        return store[key]

    for t in range(schedule.num_ticks):
        outbox: list[tuple[str, int, tuple[int, int], jax.Array]] = []
        for s in range(p):
            op = int(schedule.op[t, s])
            if op == Op.IDLE:
                continue
            i, j = int(schedule.microbatch[t, s]), int(schedule.chunk[t, s])
            q = j * p + s
            trace[t, s, 0], trace[t, s, 1], trace[t, s, 3] = op, i, j
            x = inputs[i] if q == 0 else take(stash[s], (i, j), "stage input", t, s)
            if op == Op.F:
                if q < n_virtual - 1:
                    nxt = q + 1
                    y = forward(chunk_params(q), x)
                    outbox.append(("activation", nxt % p, (i, nxt // p), y))
                continue
            if q == n_virtual - 1:
                loss_i, count_i, dparams, dhead, dx = backward_last(
                    chunk_params(q), head_params, x, targets_of(i)
                )
                loss_sum = loss_sum + loss_i
                count = count + count_i
                head_grads = jax.tree.map(jnp.add, head_grads, dhead)
            else:
                g = take(cotangents[s], (i, j), "cotangent", t, s)
                del cotangents[s][(i, j)]
                trace[t, s, 2] = i
                dparams, dx = backward(chunk_params(q), x, g)
            if q > 0:
                del stash[s][(i, j)]
                prv = q - 1
                outbox.append(("cotangent", prv % p, (i, prv // p), dx))
            else:
                input_grads[i] = dx
            grads[q] = dparams if grads[q] is None else jax.tree.map(jnp.add, grads[q], dparams)
        for kind, dest, key, value in outbox:
            (stash if kind == "activation" else cotangents)[dest][key] = value

    left = [(s, k) for s in range(p) for k in (*stash[s], *cotangents[s])]
    missing = [q for q in range(n_virtual) if grads[q] is None]
    missing += [i for i in range(m) if input_grads[i] is None]
    if left or missing:
        raise PipelineError(
            f"reference_pipeline({schedule.kind!r}, stages={p}, microbatches={m}): the table "
            f"left messages {left} unused or ops {missing} unrun; the schedule's table is wrong."
        )
    stage_grads = jax.tree.map(lambda *chunks: jnp.concatenate(chunks, axis=0), *grads)
    return PipelineOutput(
        loss_sum=jnp.asarray(loss_sum),
        count=jnp.asarray(count),
        stage_grads=stage_grads,
        head_grads=head_grads,
        input_grads=jnp.stack([g for g in input_grads if g is not None]),
        trace=jnp.asarray(trace),
    )
