"""The compiled pipeline executor: a whole schedule as one SPMD program.

``make_pipeline`` turns a stage function, a last-stage loss function and a :class:`Schedule`
into a function that runs every forward and backward of one training step inside a single
``jax.shard_map`` over the pipeline mesh axis — meant to be called inside the caller's
``jax.jit`` like any other loss-and-gradient function.

How one step runs (per device ``s`` of the pipeline axis; see docs/concepts/pipeline.md):

* ``lax.scan`` over the ``T`` ticks of the schedule's table. Each device reads its own row
  (``axis_index``) and a ``lax.switch`` runs only its op: idle, ``F`` (stage forward of one
  microbatch on one layer chunk, output sent on) or ``B`` (the stage forward recomputed from
  the stashed input under ``jax.vjp`` and applied to the arrived cotangent — on the last
  virtual stage to the cotangent of the loss of its own output: parameter gradients go into
  running sums, the input cotangent is sent back). A forward on the last virtual stage only
  holds its input for that backward. With ``activations="stash"`` the forward also writes the
  residuals of its ``jax.vjp`` into a residual stash, and ``B`` rebuilds the VJP from them
  instead of recomputing the forward (the traced forward is dead code that XLA removes).
* After the switch, on every device and every tick, one ``ppermute`` sends the forward output
  to the next stage and one sends the input cotangent to the previous stage (a ring when
  ``virtual_stages > 1``). No pipeline-axis collective sits inside a branch that depends on
  the device, so no device can wait on a collective that another skips.
* Arriving messages go into bounded buffers whose slots the host assigned from the table: a
  stash of ``schedule.stash_size`` stage inputs and ``schedule.cotangent_slots`` cotangents.
  1F1B keeps about ``p`` microbatch inputs per stage; GPipe keeps ``m``.
* Loss sum, token count, head gradients and input cotangents are summed over the pipeline axis
  at the end (only one device holds each), so every device returns the true global values.

Other mesh axes (data, FSDP, tensor) stay outside the manual pipeline axis
(``axis_names={axis}``): the XLA partitioner handles them inside the stage and loss functions,
so DP × TP × PP compose on one mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any, Literal, TypeAlias, get_args

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from titanax.pipeline._errors import PipelineError
from titanax.pipeline._schedule import Op, Schedule, _allocate

__all__ = ["PipelineOutput", "make_pipeline"]

logger = logging.getLogger(__name__)

PyTree: TypeAlias = Any
StageFn: TypeAlias = Callable[[PyTree, jax.Array], jax.Array]
LossFn: TypeAlias = Callable[[PyTree, jax.Array, PyTree], tuple[jax.Array, jax.Array]]
Activations: TypeAlias = Literal["recompute", "stash"]

# Columns of the executor's per-device table row.
_BRANCH, _MB, _CHUNK, _XS, _GS, _FIN, _GIN, _OP, _RS = range(9)
# Branches of the per-tick switch.
_IDLE, _FWD, _BWD, _BWD_LAST = range(4)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["loss_sum", "count", "stage_grads", "head_grads", "input_grads", "trace"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PipelineOutput:
    """What one pipelined step returns (global values, replicated over the pipeline axis
    unless stated). A pytree (a registered dataclass), so it can leave a ``jax.jit``.

    Attributes:
      loss_sum: scalar, the sum of ``loss_fn``'s first result over all microbatches.
      count: scalar, the sum of ``loss_fn``'s second result (e.g. tokens) over microbatches.
      stage_grads: gradients of ``loss_sum`` for the stacked stage parameters; same tree,
        shapes and storage order as ``stage_params``, leading dim sharded over the pipeline
        axis.
      head_grads: gradients of ``loss_sum`` for ``head_params`` (same tree).
      input_grads: ``[m, mb, ...]`` cotangent of ``loss_sum`` for ``inputs``.
      trace: ``None``, or with ``trace=True`` an int32 ``[T, p, 4]`` array with, per tick and
        stage, (op, microbatch of the stage input used, microbatch of the cotangent used,
        chunk); the microbatch numbers travel with the data, so they show where every message
        really went (``-1`` where none).
    """

    loss_sum: jax.Array
    count: jax.Array
    stage_grads: PyTree
    head_grads: PyTree
    input_grads: jax.Array
    trace: jax.Array | None


def residual_slots(schedule: Schedule) -> tuple[np.ndarray, int]:
    """Slots of the residual stash (``activations="stash"``): int32 ``[T, p]``, the slot that
    ``F`` writes and the matching ``B`` reads (``-1`` elsewhere), and the slot count ``K`` (max
    over stages). A (microbatch, chunk) holds its slot from its forward to its backward; the
    last virtual stage stashes nothing (its forward runs inside its backward)."""
    t = schedule._tables
    p, v = schedule.stages, schedule.virtual_stages
    slots = np.full(t.op.shape, -1, np.int32)
    count = 0
    for s in range(p):
        start: dict[int, int] = {}
        intervals: list[tuple[int, int, int]] = []
        for tick in range(t.op.shape[0]):
            op, chunk = t.op[tick, s], int(t.chunk[tick, s])
            if op == Op.IDLE or chunk * p + s == p * v - 1:
                continue
            key = int(t.microbatch[tick, s]) * v + chunk
            if op == Op.F:
                start[key] = tick
            else:
                intervals.append((key, start[key], tick))
        assigned, k = _allocate(intervals)
        count = max(count, k)
        for key, a, b in intervals:
            slots[a, s] = slots[b, s] = assigned[key]
    return slots, count


def executor_table(schedule: Schedule) -> np.ndarray:
    """The schedule as the executor reads it: int32 ``[T, p, 9]`` (branch, microbatch, chunk,
    stash slot read, cotangent slot read, stash slot written, cotangent slot written, op,
    residual slot written by ``F`` / read by ``B``)."""
    t = schedule._tables
    p, v = schedule.stages, schedule.virtual_stages
    last_virtual = p * v - 1
    stage = np.arange(p)[None, :]
    virtual = t.chunk * p + stage
    branch = np.where(t.op == Op.F, _FWD, _IDLE)
    branch = np.where((t.op == Op.F) & (virtual == last_virtual), _IDLE, branch)
    branch = np.where(t.op == Op.B, np.where(virtual == last_virtual, _BWD_LAST, _BWD), branch)
    columns = [
        branch,
        np.maximum(t.microbatch, 0),
        np.maximum(t.chunk, 0),
        t.x_slot,
        t.g_slot,
        t.fin_slot,
        t.gin_slot,
        t.op,
        residual_slots(schedule)[0],
    ]
    return np.stack([np.asarray(c, np.int32) for c in columns], axis=-1)


def _varying_axes(x: Any) -> frozenset[str]:
    kind = jax.typeof(x)
    manual = getattr(kind, "manual_axis_type", None)
    if manual is not None:
        return frozenset(manual.varying)
    return frozenset(getattr(kind, "vma", frozenset()))


def _to_varying(tree: PyTree, axis: str) -> PyTree:
    """Marks every leaf pipeline-varying (``pcast``), skipping leaves that already are."""

    def cast(x: Any) -> Any:
        if axis in _varying_axes(x):
            return x
        return lax.pcast(x, axis, to="varying")

    return jax.tree.map(cast, tree)


def _shape_str(x: Any) -> str:
    return f"{x.dtype}{list(x.shape)}"


def _check_call(
    stage_fn: StageFn,
    loss_fn: LossFn,
    schedule: Schedule,
    stage_params: PyTree,
    head_params: PyTree,
    inputs: Any,
    targets: PyTree,
) -> tuple[int, jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """Validates shapes before tracing the pipeline; returns (layers per chunk, loss, count)."""
    p, m, v = schedule.stages, schedule.microbatches, schedule.virtual_stages
    name = f"make_pipeline(schedule={schedule.kind!r}, stages={p}, microbatches={m})"
    if not hasattr(inputs, "shape") or len(inputs.shape) < 1 or inputs.shape[0] != m:
        shape = getattr(inputs, "shape", type(inputs).__name__)
        raise PipelineError(
            f"{name}: inputs must be one array [microbatches={m}, microbatch, ...], got shape "
            f"{shape}. Split the batch with inputs.reshape(batch // {m}, {m}, ...).swapaxes(0, "
            "1), or use pipeline_value_and_grad, which splits for you."
        )
    for path, leaf in jax.tree_util.tree_leaves_with_path(targets):
        if len(leaf.shape) < 1 or leaf.shape[0] != m:
            raise PipelineError(
                f"{name}: targets leaf {jax.tree_util.keystr(path) or '<root>'} has shape "
                f"{tuple(leaf.shape)}; every targets leaf needs a leading microbatch dim of {m}."
            )
    leaves = jax.tree_util.tree_leaves_with_path(stage_params)
    if not leaves:
        raise PipelineError(f"{name}: stage_params has no leaves; pass the stacked layers.")
    sizes = {
        jax.tree_util.keystr(path): leaf.shape[0] if leaf.shape else 0 for path, leaf in leaves
    }
    layers = set(sizes.values())
    if len(layers) != 1:
        raise PipelineError(
            f"{name}: stage_params leaves disagree on the leading (layer) dim: {sizes}; every "
            "leaf must be stacked over the same number of layers."
        )
    n_layers = layers.pop()
    if n_layers < 1 or n_layers % (p * v):
        raise PipelineError(
            f"{name}: the stacked layer dim is {n_layers}, not a positive multiple of stages × "
            f"virtual_stages = {p} × {v} = {p * v}; each virtual stage needs the same number of "
            f"layers. Use a layer count divisible by {p * v} or change stages/virtual_stages."
        )
    per_chunk = n_layers // (p * v)

    x = jax.ShapeDtypeStruct(inputs.shape[1:], inputs.dtype)
    chunk = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((per_chunk, *a.shape[1:]), a.dtype), stage_params
    )
    y = jax.eval_shape(stage_fn, chunk, x)
    if not hasattr(y, "shape") or y.shape != x.shape or y.dtype != x.dtype:
        got = _shape_str(y) if hasattr(y, "shape") else type(y).__name__
        raise PipelineError(
            f"{name}: stage_fn maps an activation {_shape_str(x)} to {got}; a pipeline stage "
            "must return one array of the same shape and dtype as its input, so that stages can "
            "pass it on. Move shape-changing parts into the pre-stage or loss function."
        )
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), targets)
    out = jax.eval_shape(loss_fn, head_params, x, target)
    if (
        not isinstance(out, tuple | list)
        or len(out) != 2
        or any(not hasattr(o, "shape") or o.shape != () for o in out)
    ):
        raise PipelineError(
            f"{name}: loss_fn(head_params, outputs, targets) must return two scalars (loss sum, "
            f"count) for one microbatch, got {jax.tree.map(_shape_str, out)}."
        )
    return per_chunk, out[0], out[1]


def make_pipeline(
    stage_fn: StageFn,
    loss_fn: LossFn,
    *,
    mesh: Mesh,
    schedule: Schedule,
    axis: str = "pipeline",
    bubble_fill: float = 0.0,
    trace: bool = False,
    activations: Activations = "recompute",
) -> Callable[[PyTree, PyTree, jax.Array, PyTree], PipelineOutput]:
    """Compiles a schedule into one function computing the loss and all gradients of a step.

    The returned function runs inside the caller's ``jax.jit`` (or eagerly): one
    ``jax.shard_map`` over ``axis`` with ``axis_names={axis}``, a ``lax.scan`` over the
    schedule's ticks, a ``lax.switch`` per tick and two unconditional ``ppermute``s per tick.

    Activation memory (``activations``), per device:

    * ``"recompute"`` (default): each backward recomputes the stage forward from the stashed
      stage input under ``jax.vjp``. The stash holds ``schedule.stash_size`` stage inputs
      (one ``[mb, ...]`` activation each: ``m`` for GPipe, about ``p`` for 1F1B) and one
      stage's forward-and-backward working set is live at a time; the price is one extra
      stage forward per backward (about a third more compute).
    * ``"stash"``: each forward keeps the residuals of its ``jax.vjp`` (what the backward
      needs: e.g. attention probabilities, MLP hidden activations) in a residual stash until
      its backward, which applies them without recomputing the forward — what GPipe and 1F1B
      do in their papers and PyTorch's pipelining by default. Memory then scales with the
      microbatches alive per stage: ``m`` residual sets for GPipe, at most ``p`` for 1F1B
      (``p·v``-ish chunks for interleaved), each as big as one stage's residuals for one
      microbatch (often tens of activations). Residuals that are a parameter leaf itself or
      the stage input itself are not stashed (the current parameters and the input stash are
      used); a residual *derived* from the parameters (e.g. ``params["w"][k]`` in a Python
      loop over layers) is stashed per microbatch — scan over the stacked layers
      (``lax.scan``) to avoid that. The last virtual stage stashes nothing (its forward runs
      inside its backward). On CPU, where the stage compute is cheap next to memory traffic,
      ``"stash"`` can be slower; it pays where compute dominates (accelerators, big layers).

    Args:
      stage_fn: ``stage_fn(chunk_params, x) -> y`` for one layer chunk: ``chunk_params`` is
        ``stage_params`` with leading dim ``L / (p·v)`` (e.g. scan over those layers), ``x`` one
        microbatch activation ``[mb, ...]``; ``y`` must have the shape and dtype of ``x``.
      loss_fn: ``loss_fn(head_params, y, targets_mb) -> (loss_sum, count)`` on the last virtual
        stage's output of one microbatch; two scalars. Gradients are of the sum of
        ``loss_sum`` over microbatches (divide by the summed ``count`` yourself, or use
        :func:`pipeline_value_and_grad`).
      mesh: the mesh; ``axis`` must be one of its axes with size ``schedule.stages``. Other axes
        stay automatic (data/tensor sharding of the arguments is kept).
      schedule: the :class:`Schedule` (kind, stages, microbatches, virtual stages).
      axis: the pipeline mesh axis name.
      bubble_fill: value written into unused stash slots, the sends of idle stages and the
        not-yet-written input cotangents. Tests pass ``float("nan")`` so that any read of a
        bubble poisons the result; ``0.0`` (default) in training.
      trace: also return the per-tick trace (``PipelineOutput.trace``), with microbatch tags
        carried next to every message (a few int32 values per tick; for tests).
      activations: ``"recompute"`` (default) or ``"stash"``: recompute the stage forward in
        every backward, or keep the forward's residuals until the backward (see above).
        Results are the same up to float rounding; unused residual slots hold
        ``bubble_fill``.

    Returns:
      ``fn(stage_params, head_params, inputs, targets) -> PipelineOutput`` where
      ``stage_params`` leaves are ``[L, ...]`` in storage order (:func:`to_storage_order`;
      natural order when ``virtual_stages == 1``), sharded (or shardable) over ``axis`` on dim
      0; ``head_params`` any tree used by ``loss_fn`` (replicated over ``axis``); ``inputs``
      ``[m, mb, ...]``; ``targets`` a tree of ``[m, mb, ...]`` leaves.

    Raises:
      PipelineError: at once: ``activations`` not ``"recompute"`` or ``"stash"``. At trace
        time: ``axis`` not in the mesh or its size not ``stages``;
        ``inputs``/``targets`` without a leading dim of ``microbatches``; stacked leaves with
        different leading dims or one not divisible by ``stages × virtual_stages``;
        ``stage_fn`` changing the activation's shape or dtype; ``loss_fn`` not returning two
        scalars.

    Example:
      >>> pipe = make_pipeline(stage_fn, loss_fn, mesh=mesh, schedule=build_schedule(
      ...     "1f1b", stages=4, microbatches=8))
      >>> out = jax.jit(pipe)(blocks, head, inputs, targets)   # doctest: +SKIP

    References:
      docs/concepts/pipeline.md; ``jax.shard_map``, ``jax.lax.ppermute``, ``jax.lax.switch``,
      ``jax.vjp``. Huang et al., "GPipe: Efficient Training of Giant Neural Networks using
      Pipeline Parallelism", 2019 (activation memory of m microbatches, or re-materialization);
      Narayanan et al., "Efficient Large-Scale Language Model Training on GPU Clusters Using
      Megatron-LM", 2021 (1F1B: at most p microbatches in flight per stage).
    """
    if not isinstance(schedule, Schedule):
        raise PipelineError(
            f"make_pipeline: schedule must be a titanax.pipeline.Schedule, got "
            f"{type(schedule).__name__}; build one with build_schedule(kind, stages=..., "
            "microbatches=...)."
        )
    if axis not in mesh.axis_names:
        raise PipelineError(
            f"make_pipeline: axis {axis!r} is not an axis of the mesh {dict(mesh.shape)}; "
            "pass axis= the name of the pipeline mesh axis."
        )
    p, v = schedule.stages, schedule.virtual_stages
    if mesh.shape[axis] != p:
        raise PipelineError(
            f"make_pipeline: the pipeline axis {axis!r} has size {mesh.shape[axis]} in the mesh "
            f"{dict(mesh.shape)}, but the schedule has stages={p}; use a schedule with "
            f"stages={mesh.shape[axis]} or a mesh whose {axis!r} axis has size {p}."
        )
    if not isinstance(activations, str) or activations not in get_args(Activations):
        raise PipelineError(
            f"make_pipeline: activations must be 'recompute' (backward recomputes the stage "
            f"forward from the stashed stage input) or 'stash' (the forward's residuals are "
            f"kept until the backward), got {activations!r}."
        )
    stash_residuals = activations == "stash"
    table = executor_table(schedule)
    n_rslots = max(residual_slots(schedule)[1], 1)
    n_slots = max(schedule.stash_size, 1)
    n_gslots = max(schedule.cotangent_slots, 1)
    ring = v > 1
    fwd_perm = [(i, (i + 1) % p) for i in range(p)] if ring else [(i, i + 1) for i in range(p - 1)]
    bwd_perm = [(i, (i - 1) % p) for i in range(p)] if ring else [(i + 1, i) for i in range(p - 1)]
    fill = float(bubble_fill)

    def pipeline(
        stage_params: PyTree, head_params: PyTree, inputs: jax.Array, targets: PyTree
    ) -> PipelineOutput:
        per_chunk, loss_aval, count_aval = _check_call(
            stage_fn, loss_fn, schedule, stage_params, head_params, inputs, targets
        )

        def body(
            sp: PyTree, hp: PyTree, xs: jax.Array, tg: PyTree
        ) -> tuple[Any, Any, PyTree, PyTree, jax.Array, jax.Array]:
            stage = lax.axis_index(axis)
            # [L/p, ...] -> [v, L/(p·v), ...]: chunk j of this device is virtual stage j·p + s.
            sp = jax.tree.map(lambda a: a.reshape(v, per_chunk, *a.shape[1:]), sp)
            # Input cotangents: the same on every device (pipeline-invariant), so the carry is
            # the output buffer; entries never written stay `fill`. `full_like` keeps the
            # inputs' sharding over the other (automatic or explicit) mesh axes.
            gin = jnp.full_like(xs, fill)
            hp, xs, tg = _to_varying((hp, xs, tg), axis)
            one = jnp.full_like(xs[0], fill)  # one microbatch activation, pipeline-varying

            def filled(count: int | None = None) -> jax.Array:
                return one if count is None else jnp.broadcast_to(one, (count, *one.shape))

            def chunk_of(tree: PyTree, ch: jax.Array | int) -> PyTree:
                if v == 1:
                    return jax.tree.map(lambda a: a[0], tree)
                return jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, ch, 0, False), tree)

            def add_chunk(acc: PyTree, grads: PyTree, ch: jax.Array) -> PyTree:
                if v == 1:
                    return jax.tree.map(lambda a, g: a.at[0].add(g), acc, grads)
                return jax.tree.map(lambda a, g: a.at[ch].add(g), acc, grads)

            carry = {
                "stash": filled(n_slots),
                "gbuf": filled(n_gslots),
                "acc": jax.tree.map(jnp.zeros_like, sp),
                "hacc": jax.tree.map(jnp.zeros_like, hp),
                "loss": jnp.zeros((), loss_aval.dtype),
                "count": jnp.zeros((), count_aval.dtype),
            }
            if trace:
                carry["stash_tag"] = jnp.full((n_slots,), -1, jnp.int32)
                carry["gbuf_tag"] = jnp.full((n_gslots,), -1, jnp.int32)
            if stash_residuals:
                # Residual stash: one [K, *shape] buffer per residual the stage's VJP keeps
                # (parameters and the stage input excluded). Only shapes, dtypes and shardings
                # of this trace are used; XLA drops its computation.
                residuals = _split_vjp(stage_fn, chunk_of(sp, 0), one)[3]
                carry["res"] = [
                    jnp.broadcast_to(r, (n_rslots, *r.shape)) for r in _filled_like(residuals, fill)
                ]
            carry = _to_varying(carry, axis)
            carry["gin"] = gin

            def stage_input(ops: tuple[Any, ...]) -> jax.Array:
                stash, row = ops[4], ops[6]
                return jnp.where(
                    row[_XS] < 0,
                    lax.dynamic_index_in_dim(xs, row[_MB], 0, False),
                    lax.dynamic_index_in_dim(stash, jnp.maximum(row[_XS], 0), 0, False),
                )

            # Residuals a branch hands to the stash (`fill` unless the branch is F).
            no_residuals: list[jax.Array] = (
                _filled_like([r[0] for r in carry["res"]], fill) if stash_residuals else []
            )

            def idle(ops: tuple[Any, ...]) -> tuple[Any, ...]:
                acc, hacc, loss, count = ops[:4]
                return acc, hacc, loss, count, filled(), no_residuals

            def forward(ops: tuple[Any, ...]) -> tuple[Any, ...]:
                acc, hacc, loss, count = ops[:4]
                params, x = chunk_of(sp, ops[6][_CHUNK]), stage_input(ops)
                if not stash_residuals:
                    return acc, hacc, loss, count, stage_fn(params, x), no_residuals
                y, _, _, residuals = _split_vjp(stage_fn, params, x)
                return acc, hacc, loss, count, y, _to_varying(residuals, axis)

            def loss_and_cotangent(
                y: jax.Array, sums: tuple[Any, Any, Any], row: jax.Array
            ) -> tuple[Any, ...]:
                # Last virtual stage: the loss of its own output starts the backward.
                hacc_, loss_, count_ = sums
                tg_mb = jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, row[_MB], 0, False), tg)
                loss_i, vjp_loss, count_i = jax.vjp(
                    lambda head, out: loss_fn(head, out, tg_mb), hp, y, has_aux=True
                )
                dhead, g = vjp_loss(jnp.ones_like(loss_i))
                hacc_ = jax.tree.map(jnp.add, hacc_, dhead)
                return g, hacc_, loss_ + loss_i, count_ + count_i

            def arrived_cotangent(ops: tuple[Any, ...]) -> jax.Array:
                gbuf, row = ops[5], ops[6]
                g: jax.Array = lax.dynamic_index_in_dim(gbuf, jnp.maximum(row[_GS], 0), 0, False)
                return g

            def backward(ops: tuple[Any, ...]) -> tuple[Any, ...]:
                acc, hacc, loss, count, _, _, row = ops[:7]
                ch = row[_CHUNK]
                y, vjp = jax.vjp(stage_fn, chunk_of(sp, ch), stage_input(ops))

                def from_loss(sums: tuple[Any, Any, Any]) -> tuple[Any, ...]:
                    return loss_and_cotangent(y, sums, row)

                def from_next(sums: tuple[Any, Any, Any]) -> tuple[Any, ...]:
                    return (arrived_cotangent(ops), *sums)

                # One copy of the stage's backward in the program; only the cotangent's source
                # differs between the last virtual stage and the others.
                g, hacc, loss, count = lax.cond(
                    row[_BRANCH] == _BWD_LAST, from_loss, from_next, (hacc, loss, count)
                )
                dparams, dx = vjp(g)
                return add_chunk(acc, dparams, ch), hacc, loss, count, dx, no_residuals

            def backward_last(ops: tuple[Any, ...]) -> tuple[Any, ...]:
                # Stash mode, last virtual stage: forward, loss and backward in one op.
                acc, hacc, loss, count, _, _, row = ops[:7]
                ch = row[_CHUNK]
                y, vjp = jax.vjp(stage_fn, chunk_of(sp, ch), stage_input(ops))
                g, hacc, loss, count = loss_and_cotangent(y, (hacc, loss, count), row)
                dparams, dx = vjp(g)
                return add_chunk(acc, dparams, ch), hacc, loss, count, dx, no_residuals

            def backward_stashed(ops: tuple[Any, ...]) -> tuple[Any, ...]:
                # Stash mode: the VJP is rebuilt from the residuals F stashed; the forward
                # traced here only provides the VJP's structure and is dead code.
                acc, hacc, loss, count, _, _, row, res = ops
                ch = row[_CHUNK]
                params, x = chunk_of(sp, ch), stage_input(ops)
                _, treedef, plan, residuals = _split_vjp(stage_fn, params, x)
                slot = jnp.maximum(row[_RS], 0)
                stashed = [lax.dynamic_index_in_dim(buf, slot, 0, False) for buf in res]
                _check_residuals(residuals, stashed)
                vjp = jax.tree_util.tree_unflatten(
                    treedef, _leaves(plan, jax.tree.leaves(params), x, stashed)
                )
                dparams, dx = vjp(arrived_cotangent(ops))
                return add_chunk(acc, dparams, ch), hacc, loss, count, dx, no_residuals

            def tick(carry: dict[str, Any], rows: jax.Array) -> tuple[dict[str, Any], Any]:
                row = lax.dynamic_index_in_dim(rows, stage, 0, False)
                names = ("acc", "hacc", "loss", "count", "stash", "gbuf")
                ops: tuple[Any, ...] = (*(carry[k] for k in names), row)
                # One op per stage and tick, so one message buffer: the forward output after F,
                # the input cotangent after B (`fill` when idle).
                if stash_residuals:
                    ops = (*ops, carry["res"])
                    branches = [idle, forward, backward_stashed, backward_last]
                    index = row[_BRANCH]
                else:
                    branches = [idle, forward, backward]
                    index = jnp.minimum(row[_BRANCH], _BWD)
                acc, hacc, loss, count, msg, residuals = lax.switch(index, branches, ops)
                # The first virtual stage (device 0) computed an input cotangent: every device
                # evaluates the same predicate from the constant table, so the psum inside the
                # cond runs on all devices or on none.
                first = rows[0]
                gin = lax.cond(
                    (first[_OP] == Op.B) & (first[_XS] < 0),
                    lambda g: lax.dynamic_update_index_in_dim(
                        g, lax.psum(jnp.where(stage == 0, msg, 0), axis), first[_MB], 0
                    ),
                    lambda g: g,
                    carry["gin"],
                )
                # Unconditional sends, every tick, on every device; receivers keep what the
                # table says arrives.
                recv_f = lax.ppermute(msg, axis, fwd_perm) if fwd_perm else msg
                recv_b = lax.ppermute(msg, axis, bwd_perm) if bwd_perm else msg
                new = {"acc": acc, "hacc": hacc, "loss": loss, "count": count, "gin": gin}
                new["stash"] = _write(carry["stash"], row[_FIN], recv_f)
                new["gbuf"] = _write(carry["gbuf"], row[_GIN], recv_b)
                if stash_residuals:
                    written = jnp.where(row[_BRANCH] == _FWD, row[_RS], -1)
                    new["res"] = [
                        _write(buf, written, r)
                        for buf, r in zip(carry["res"], residuals, strict=True)
                    ]
                record = None
                if trace:
                    # Microbatch tags travel like the data: through the same slots and sends.
                    x_tag = jnp.where(
                        row[_XS] < 0, row[_MB], carry["stash_tag"][jnp.maximum(row[_XS], 0)]
                    )
                    g_tag = carry["gbuf_tag"][jnp.maximum(row[_GS], 0)]
                    busy = row[_OP] != Op.IDLE
                    is_b = row[_OP] == Op.B
                    tag = jnp.where((row[_BRANCH] == _FWD) | is_b, x_tag, -1)
                    tag_f = lax.ppermute(tag, axis, fwd_perm) if fwd_perm else tag
                    tag_b = lax.ppermute(tag, axis, bwd_perm) if bwd_perm else tag
                    new["stash_tag"] = _write(carry["stash_tag"], row[_FIN], tag_f)
                    new["gbuf_tag"] = _write(carry["gbuf_tag"], row[_GIN], tag_b)
                    record = jnp.stack(
                        [
                            row[_OP],
                            jnp.where(busy, x_tag, -1),
                            jnp.where(is_b & (row[_GS] >= 0), g_tag, -1),
                            jnp.where(busy, row[_CHUNK], -1),
                        ]
                    )
                return new, record

            carry, records = lax.scan(tick, carry, jnp.asarray(table))
            grads = jax.tree.map(lambda a: a.reshape(v * per_chunk, *a.shape[2:]), carry["acc"])
            loss = lax.psum(carry["loss"], axis)
            count = lax.psum(carry["count"], axis)
            hgrads = lax.psum(carry["hacc"], axis)
            gin = carry["gin"]
            trace_out = records[:, None, :] if trace else jnp.zeros((0, 1, 4), jnp.int32)
            return loss, count, grads, hgrads, gin, trace_out

        run = jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(P(axis), P(), P(), P()),
            out_specs=(P(), P(), P(axis), P(), P(), P(None, axis)),
            axis_names={axis},
            check_vma=True,
        )
        loss, count, grads, hgrads, gin, trace_arr = run(stage_params, head_params, inputs, targets)
        return PipelineOutput(
            loss_sum=loss,
            count=count,
            stage_grads=grads,
            head_grads=hgrads,
            input_grads=gin,
            trace=trace_arr if trace else None,
        )

    return pipeline


def _write(buffer: jax.Array, slot: jax.Array, value: jax.Array) -> jax.Array:
    """Writes ``value`` into ``buffer[slot]`` when ``slot >= 0`` (else leaves it unchanged)."""
    index = jnp.maximum(slot, 0)
    old = lax.dynamic_index_in_dim(buffer, index, 0, False)
    out: jax.Array = lax.dynamic_update_index_in_dim(
        buffer, jnp.where(slot >= 0, value, old), index, 0
    )
    return out


# ----- residual stash (activations="stash") ---------------------------------------------------
# A leaf of the stage VJP's residuals is one of: ("param", i) the i-th parameter leaf itself,
# ("input",) the stage input itself, or ("stash", k) the k-th stashed residual.
_Plan: TypeAlias = tuple[tuple[str, int], ...]


def _split_vjp(
    stage_fn: StageFn, params: PyTree, x: jax.Array
) -> tuple[jax.Array, Any, _Plan, list[jax.Array]]:
    """Runs the stage forward under ``jax.vjp`` and splits the VJP (a pytree whose leaves are
    its residuals) into its structure, a plan and the residuals worth stashing.

    Residuals that are a parameter leaf or the stage input themselves (by identity) are not
    stashed: the backward passes the current parameters and the stage input, which the input
    stash keeps until the backward anyway. A residual appearing twice is stashed once.

    Returns: ``(y, treedef, plan, residuals)``.
    """
    y, vjp = jax.vjp(stage_fn, params, x)
    leaves, treedef = jax.tree_util.tree_flatten(vjp)
    param_ids = {id(leaf): i for i, leaf in enumerate(jax.tree.leaves(params))}
    stash_ids: dict[int, int] = {}
    residuals: list[jax.Array] = []
    plan: list[tuple[str, int]] = []
    for leaf in leaves:
        if id(leaf) in param_ids:
            plan.append(("param", param_ids[id(leaf)]))
        elif leaf is x:
            plan.append(("input", 0))
        else:
            if id(leaf) not in stash_ids:
                stash_ids[id(leaf)] = len(residuals)
                residuals.append(leaf)
            plan.append(("stash", stash_ids[id(leaf)]))
    return y, treedef, tuple(plan), residuals


def _leaves(
    plan: _Plan, params: list[jax.Array], x: jax.Array, stashed: list[jax.Array]
) -> list[jax.Array]:
    """The VJP's leaves rebuilt from the plan of :func:`_split_vjp`."""
    source = {"param": params, "input": [x], "stash": stashed}
    return [source[kind][i] for kind, i in plan]


def _check_residuals(traced: list[jax.Array], stashed: list[jax.Array]) -> None:
    """The backward's trace must need exactly the residuals the forward's trace stashed."""
    want = [_shape_str(r) for r in traced]
    got = [_shape_str(r) for r in stashed]
    if want != got:  # pragma: no cover - both traces run the same function on the same avals
        raise PipelineError(
            f"make_pipeline(activations='stash'): the stage backward needs residuals {want} "
            f"but the forward stashed {got}; stage_fn must trace the same way every time (no "
            "Python state or randomness at trace time). Use activations='recompute'."
        )


def _filled_like(arrays: list[jax.Array], fill: float) -> list[jax.Array]:
    """Arrays like ``arrays`` (shape, dtype, sharding) filled with ``fill`` (0 for non-float)."""
    return [jnp.full_like(a, fill if jnp.issubdtype(a.dtype, jnp.inexact) else 0) for a in arrays]
