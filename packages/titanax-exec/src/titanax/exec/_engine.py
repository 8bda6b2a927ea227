"""``Engine``: a mesh, a plan and an optimizer turned into sharded state and compiled steps.

The Engine owns the layout of the training state (from the plan), builds the state directly in
that layout, compiles steps once per input signature (and says why when it has to compile again),
gives dry-run reports without training, saves and restores through a :class:`CheckpointStore`,
and runs the training loop (:meth:`Engine.fit`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from titanax.exec._compiler import CompiledStep
from titanax.exec._errors import ExecError
from titanax.exec._fit import FitLoop
from titanax.exec._hlo import CompileReport
from titanax.exec._precision import LossScale, Precision
from titanax.exec._protocols import CheckpointStore, MetricSink, ResumableData
from titanax.exec._saveable import from_saveable, optimizer_fingerprint, to_saveable
from titanax.exec._state import StepContext, TrainState, _FrozenTree
from titanax.exec._step import StepFunction
from titanax.mesh import MeshSpec
from titanax.sharding import Plan, apply_named_sharding

__all__ = ["Engine"]

logger = logging.getLogger("titanax.exec")

NanPolicy = Literal["raise", "skip", "save_and_stop"]


def _is_spec(x: Any) -> bool:
    return isinstance(x, P)


def _without_axes(spec: P, axes: Sequence[str]) -> P:
    """``spec`` with ``axes`` removed from every entry (FSDP storage -> compute layout)."""
    entries: list[Any] = []
    for entry in spec:
        if entry is None:
            entries.append(None)
            continue
        names = (entry,) if isinstance(entry, str) else tuple(entry)
        kept = tuple(n for n in names if n not in axes)
        entries.append(None if not kept else kept[0] if len(kept) == 1 else kept)
    return P(*entries)


def _check_step(step: Any, *, kind: str | None = None) -> None:
    if not isinstance(step, StepFunction):
        raise ExecError(
            f"Engine: {step!r} is not a step; decorate it with @titanax.exec.step_fn "
            "(or @step_fn(kind='eval') for an evaluation step)."
        )
    if kind is not None and step.kind != kind:
        raise ExecError(
            f"Engine: step {step.name!r} is a {step.kind} step where a {kind} step is needed; "
            f"declare it with @step_fn(kind={kind!r})."
        )


def _traced_init(init: Callable[[jax.Array], TrainState], rng: Any) -> TrainState:
    """``jax.eval_shape`` of the state's init, with the usual mistakes named."""
    key_like = isinstance(rng, jax.Array) and (
        jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) or rng.dtype == jnp.uint32
    )
    if not key_like:
        raise ExecError(f"Engine: rng={rng!r} is not a PRNG key; pass jax.random.key(seed).")
    try:
        shapes: TrainState = jax.eval_shape(init, rng)
    except (TypeError, ValueError) as err:
        raise ExecError(
            f"Engine: init_fn(rng) failed while its shapes were traced: {err}. init_fn takes one "
            "PRNG key and returns a pytree of arrays (the parameters)."
        ) from err
    bad = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_flatten_with_path(shapes.params)[0]
        if not hasattr(leaf, "shape")
    ]
    if bad:
        raise ExecError(f"Engine: init_fn returned non-array parameters at {bad[:5]}.")
    return shapes


class Engine:
    """Compiles steps for a mesh and a plan and runs training around them.

    Args:
      mesh: a :class:`~titanax.mesh.MeshSpec` (built here) or a ``jax.sharding.Mesh``.
      plan: the parallel layout (:class:`~titanax.sharding.Plan`); validated against the mesh.
      optimizer: any ``optax.GradientTransformation``.
      precision: dtype policy (default fp32 everywhere).
      checkpoint: a :class:`CheckpointStore` (e.g. ``titanax.io.OrbaxCheckpointer``).
      sinks: :class:`MetricSink` objects receiving metrics at log points.
      hooks: objects with any of ``on_train_start(engine, state)``, ``on_log(step, metrics)``,
        ``on_train_end(engine, state)``.
      strict: raise :class:`RecompileError` when a step would compile a second time.
      nan_policy: ``"raise"`` (a non-finite loss raises at the next log point), ``"skip"``
        (updates with non-finite gradients are skipped on device and counted), or
        ``"save_and_stop"`` (skip, then save a checkpoint and stop at the next log point).
      metadata: extra JSON-safe metadata written with every checkpoint (e.g. the resolved config).

    Raises:
      ShardingError: the plan does not fit the mesh (from ``plan.validate``).
      ExecError: an unknown ``nan_policy`` or an optimizer that is not an optax transformation.

    Example:
      >>> engine = Engine(MeshSpec(axes=("data", "tensor"), shape=(-1, 2)),
      ...                 Plan(data_parallel=DP("data"), tensor_parallel=TP("tensor", rules=r)),
      ...                 optimizer=optax.adamw(3e-4))
      >>> state = engine.create_state(init_fn, jax.random.key(0))
      >>> state = engine.fit(train_step, loader, steps=1000, log_every=50)
    """

    def __init__(
        self,
        mesh: MeshSpec | jax.sharding.Mesh,
        plan: Plan,
        *,
        optimizer: optax.GradientTransformation,
        precision: Precision | None = None,
        checkpoint: CheckpointStore | None = None,
        sinks: Sequence[MetricSink] = (),
        hooks: Sequence[Any] = (),
        strict: bool = False,
        nan_policy: NanPolicy = "raise",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.mesh = mesh.build() if isinstance(mesh, MeshSpec) else mesh
        if not isinstance(self.mesh, jax.sharding.Mesh):
            raise ExecError(f"Engine: mesh must be a MeshSpec or jax.sharding.Mesh, got {mesh!r}.")
        self.mesh_spec = MeshSpec.from_mesh(self.mesh)
        if not isinstance(plan, Plan):
            raise ExecError(
                f"Engine: plan={plan!r} is not a titanax.sharding.Plan; build one, e.g. "
                "Plan(data_parallel=DP('data'))."
            )
        plan.validate(self.mesh)
        self.plan = plan
        if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
            raise ExecError(
                f"Engine: optimizer={optimizer!r} is not an optax.GradientTransformation."
            )
        if nan_policy not in ("raise", "skip", "save_and_stop"):
            raise ExecError(
                f"Engine: nan_policy={nan_policy!r} must be 'raise', 'skip' or 'save_and_stop'."
            )
        self.optimizer = optimizer
        self.precision = precision or Precision()
        self.checkpoint = checkpoint
        self.sinks = tuple(sinks)
        self.hooks = tuple(hooks)
        self.strict = strict
        self.nan_policy: NanPolicy = nan_policy
        self.metadata = dict(metadata or {})
        self.state: TrainState | None = None
        self.stop_reason: str | None = None
        self._steps: dict[StepFunction, CompiledStep] = {}
        self._state_shardings: Any = None
        self.compile_seconds: list[float] = []

    # -- layouts --------------------------------------------------------------------------------

    def _named(self, specs: Any) -> Any:
        return jax.tree.map(lambda s: NamedSharding(self.mesh, s), specs, is_leaf=_is_spec)

    def state_specs(self, state: TrainState) -> TrainState:
        """PartitionSpecs of every leaf of ``state`` (arrays or ShapeDtypeStructs) per the plan.

        Params follow ``plan.param_specs``; param-shaped optimizer leaves follow
        ``plan.optimizer_specs`` (FSDP/ZeRO-1), mapped with ``optax.tree_map_params``; every
        other leaf (counts, step, PRNG data, loss scale, hyper-parameters) is replicated.

        Raises:
          ShardingError: a parameter cannot take its planned layout (path, dim, axis, fix).
        """
        param_specs = self.plan.param_specs(state.params, self.mesh)
        opt_param_specs = self.plan.optimizer_specs(state.params, self.mesh)
        opt_specs = optax.tree_map_params(
            state.tx,
            lambda _, spec: spec,
            state.opt_state,
            opt_param_specs,
            transform_non_params=lambda _: P(),
            is_leaf=_is_spec,
        )
        return state.replace(
            params=param_specs,
            opt_state=opt_specs,
            step=P(),
            rngs={name: P() for name in state.rngs},
            loss_scale=LossScale(scale=P(), good_steps=P()),  # type: ignore[arg-type]
            skipped=P(),
        )

    def state_shardings(self, state: TrainState) -> Any:
        """``NamedSharding`` of every leaf of ``state`` (see :meth:`state_specs`)."""
        return self._named(self.state_specs(state))

    def batch_shardings(self, batch: Any) -> Any:
        """``NamedSharding`` tree of a global batch: leading dim over the plan's data axes.

        Raises:
          ShardingError: a batch leaf's leading dim does not divide over the data axes.
        """
        return self._named(self.plan.batch_specs(batch, self.mesh))

    def describe(self, params: Any) -> str:
        """The plan's per-parameter layout table on this mesh (see ``Plan.describe``)."""
        return self.plan.describe(params, self.mesh)

    # -- state ----------------------------------------------------------------------------------

    def _init_fn(
        self, init_fn: Callable[[jax.Array], Any], rngs: Mapping[str, jax.Array] | None
    ) -> Callable[[jax.Array], TrainState]:
        streams = dict(rngs or {})

        def init(key: jax.Array) -> TrainState:
            return TrainState.create(
                params=init_fn(key), tx=self.optimizer, rngs=streams, precision=self.precision
            )

        return init

    def abstract_state(
        self,
        init_fn: Callable[[jax.Array], Any],
        rng: jax.Array,
        *,
        rngs: Mapping[str, jax.Array] | None = None,
    ) -> TrainState:
        """The state's shapes as ``jax.ShapeDtypeStruct`` carrying their planned shardings.

        Nothing is allocated; this is the target of checkpoint restores and the input of dry
        runs. ``init_fn(rng) -> params`` is only traced (``jax.eval_shape``).
        """
        init = self._init_fn(init_fn, rngs)
        shapes = _traced_init(init, rng)
        shardings = self.state_shardings(shapes)
        abstract: TrainState = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
        )
        return abstract

    def create_state(
        self,
        init_fn: Callable[[jax.Array], Any],
        rng: jax.Array,
        *,
        rngs: Mapping[str, jax.Array] | None = None,
    ) -> TrainState:
        """Builds params and optimizer state directly in their planned shardings.

        Shapes are derived first (``jax.eval_shape``), the layout resolved and validated, then one
        ``jax.jit(init, out_shardings=...)`` materializes each shard on its device — the full
        model never exists on one device. Every leaf, scalars included, carries its planned
        sharding, so the first step's compiled program is reused by the second.

        Args:
          init_fn: ``init_fn(rng) -> params`` (pure; e.g. ``partial(gpt_init, config)``).
          rng: PRNG key for the parameters.
          rngs: named PRNG streams for the steps (``{"dropout": jax.random.key(1)}``).

        Returns:
          The state (also kept as ``engine.state``).

        Raises:
          ShardingError: a parameter cannot take its planned layout.
        """
        init = self._init_fn(init_fn, rngs)
        shardings = self.state_shardings(_traced_init(init, rng))
        self._state_shardings = shardings
        self.state = jax.jit(init, out_shardings=shardings)(rng)
        return self.state

    def shard_params(self, params: Any) -> Any:
        """Places an existing parameter tree (e.g. pretrained weights) per the plan.

        Floating leaves are cast to ``precision.param_dtype``.

        Raises:
          ShardingError: a parameter cannot take its planned layout, or the structure of the
            spec tree does not match.
        """
        params = self.precision.cast_to_param(params)
        return apply_named_sharding(params, self.mesh, self.plan.param_specs(params, self.mesh))

    def state_from_params(
        self, params: Any, *, rngs: Mapping[str, jax.Array] | None = None
    ) -> TrainState:
        """A state around existing params: placed per the plan, optimizer state built sharded."""
        params = self.shard_params(params)
        streams = dict(rngs or {})

        def init(p: Any) -> TrainState:
            return TrainState.create(
                params=p, tx=self.optimizer, rngs=streams, precision=self.precision
            )

        shardings = self.state_shardings(jax.eval_shape(init, params))
        self._state_shardings = shardings
        self.state = jax.jit(init, out_shardings=shardings)(params)
        return self.state

    # -- compile --------------------------------------------------------------------------------

    def _compiled(self, step: StepFunction, state: Any) -> CompiledStep:
        _check_step(step)
        compiled = self._steps.get(step)
        if compiled is not None:
            return compiled
        shardings = self.state_shardings(state)
        global_view = step.view == "global"
        compute = None
        fsdp = self.plan.fsdp
        if global_view and fsdp is not None and not fsdp.zero1:
            specs = jax.tree.map(lambda s: s.spec, shardings.params)
            compute = self._named(
                jax.tree.map(lambda s: _without_axes(s, (fsdp.axis,)), specs, is_leaf=_is_spec)
            )
        dp = self.plan.data_parallel
        context = StepContext(
            view=step.view,
            data_axes=tuple(self.plan.data_axes),
            accumulate_steps=dp.accumulate_steps if dp is not None else 1,
            remat=step.remat,
            skip_nonfinite=self.nan_policy != "raise",
            param_shardings=_FrozenTree.of(shardings.params) if global_view else None,
        )
        compiled = CompiledStep(
            step,
            mesh=self.mesh,
            state_shardings=shardings,
            batch_shardings_fn=self.batch_shardings,
            context=context,
            compute_param_shardings=compute,
            strict=self.strict,
            on_compile=lambda seconds, _: self.compile_seconds.append(seconds),
        )
        self._steps[step] = compiled
        return compiled

    def _state_or_raise(self, state: TrainState | None) -> TrainState:
        state = state if state is not None else self.state
        if state is None:
            raise ExecError(
                "Engine: no state yet; call create_state(...), restore_or_create(...) or pass "
                "state=."
            )
        return state

    def compile(
        self, step: StepFunction, batch: Any, *, state: Any = None, **static: Any
    ) -> CompileReport:
        """Dry run: compiles ``step`` for ``batch`` (arrays or ShapeDtypeStructs) without running.

        Args:
          step: a :func:`step_fn`.
          batch: a batch or its shapes (``jax.ShapeDtypeStruct`` tree; global shapes).
          state: state or abstract state (:meth:`abstract_state`); default ``engine.state``.
          **static: the step's static arguments.

        Returns:
          :class:`CompileReport`: per-device argument/output/temp/code bytes, FLOPs and every
          collective with its bytes per mesh axis. The executable is cached: training with the
          same shapes does not compile again.
        """
        state = self._state_or_raise(state)
        batch = self._batch_abstract(batch)
        return self._compiled(step, state).report(state, batch, **static)

    def lower(self, step: StepFunction, batch: Any, *, state: Any = None, **static: Any) -> Any:
        """The lowered (not compiled) program of ``step`` (``jax.stages.Lowered``)."""
        state = self._state_or_raise(state)
        batch = self._batch_abstract(batch)
        return self._compiled(step, state).lower(state, batch, **static)

    def _batch_abstract(self, batch: Any) -> Any:
        shardings = self.batch_shardings(batch)
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), batch, shardings
        )

    def to_global(self, batch: Any) -> Any:
        """Host batch (this process's rows) -> global ``jax.Array`` tree over the data axes.

        Each process passes its own slice of the global batch (dim 0); with one process that is
        the whole batch. Leaves already global ``jax.Array`` with the planned sharding pass.

        Raises:
          ShardingError: the global batch dim does not divide over the data axes.
        """
        processes = jax.process_count()
        global_shapes = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                (np.shape(x)[0] * processes, *np.shape(x)[1:]) if np.ndim(x) else (),
                np.asarray(x).dtype if not isinstance(x, jax.Array) else x.dtype,
            ),
            batch,
        )
        shardings = self.batch_shardings(global_shapes)

        def place(x: Any, sharding: NamedSharding, shape: jax.ShapeDtypeStruct) -> jax.Array:
            if isinstance(x, jax.Array) and x.sharding == sharding and x.shape == shape.shape:
                return x
            array: jax.Array = jax.make_array_from_process_local_data(
                sharding, np.asarray(x), shape.shape
            )
            return array

        return jax.tree.map(place, batch, shardings, global_shapes)

    def step(self, step: StepFunction, state: TrainState, batch: Any, **static: Any) -> Any:
        """Runs one compiled step: ``(state, metrics)`` for train steps, ``metrics`` for eval.

        ``batch`` may be host arrays (converted with :meth:`to_global`) or global arrays.

        Raises:
          ExecError: ``state`` is not a TrainState, or its buffers were donated to an earlier
            step (use the state that step returned).
        """
        if not isinstance(state, TrainState):
            raise ExecError(
                f"Engine.step: state must be a TrainState (from create_state or a previous step), "
                f"got {type(state).__name__}."
            )
        if any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(state)):
            raise ExecError(
                "Engine.step: this state's buffers were donated to an earlier step and no longer "
                "exist. Continue from the state that step returned: state, metrics = "
                "engine.step(train_step, state, batch)."
            )
        return self._compiled(step, state)(state, self.to_global(batch), **static)

    def recompiles(self, step: StepFunction) -> int:
        """How many times ``step`` compiled beyond its first compile."""
        compiled = self._steps.get(step)
        return 0 if compiled is None else max(compiled.compiles - 1, 0)

    # -- checkpoints ----------------------------------------------------------------------------

    def checkpoint_metadata(self, state: TrainState, data: Any = None) -> dict[str, Any]:
        """The JSON metadata saved with a checkpoint: mesh, plan, fingerprints, data position."""
        meta: dict[str, Any] = {
            "mesh": self.mesh_spec.to_dict(),
            "plan": self.plan.to_dict(),
            "plan_fingerprint": self.plan.fingerprint(),
            "optimizer_fingerprint": optimizer_fingerprint(state),
            "precision": self.precision.to_dict(),
            "data_position": int(data.position) if isinstance(data, ResumableData) else None,
        }
        meta.update(self.metadata)
        return meta

    def save(self, state: TrainState | None = None, *, data: Any = None) -> int:
        """Saves ``state`` (default ``engine.state``) at its step through the checkpoint store.

        Returns:
          The step saved.

        Raises:
          ExecError: no checkpoint store was given.
        """
        if self.checkpoint is None:
            raise ExecError("Engine.save: no checkpoint store; pass Engine(checkpoint=...).")
        state = self._state_or_raise(state)
        step = int(jax.device_get(state.step))
        self.checkpoint.save(
            step, to_saveable(state), metadata=self.checkpoint_metadata(state, data)
        )
        return step

    def restore_or_create(
        self,
        init_fn: Callable[[jax.Array], Any],
        rng: jax.Array,
        *,
        rngs: Mapping[str, jax.Array] | None = None,
        data: Any = None,
        step: int | None = None,
    ) -> TrainState:
        """Restores the newest complete checkpoint onto this mesh and plan, or creates a state.

        The restore target is :meth:`abstract_state`, so every array loads straight into its
        current layout (another mesh, TP degree or FSDP choice than the saved run is a reshard).
        The optimizer must be the same (checked by fingerprint). A :class:`ResumableData`
        ``data`` is moved to the saved global sample position.

        Raises:
          ExecError: the checkpoint's optimizer differs from this Engine's.
        """
        if self.checkpoint is None or (step is None and self.checkpoint.latest_step() is None):
            return self.create_state(init_fn, rng, rngs=rngs)
        abstract = self.abstract_state(init_fn, rng, rngs=rngs)
        expected = optimizer_fingerprint(abstract)
        saved = self.checkpoint.metadata(step).get("optimizer_fingerprint")
        if saved is not None and saved != expected:
            raise ExecError(
                "Engine.restore_or_create: the checkpoint was written with another optimizer "
                f"(fingerprint {saved[:12]} vs {expected[:12]} now). Use the same optimizer, "
                "or restore params only and create a fresh optimizer state."
            )
        tree, meta = self.checkpoint.restore(step, to_saveable(abstract))
        state = from_saveable(abstract, tree)
        position = meta.get("data_position")
        if isinstance(data, ResumableData) and position is not None:
            data.seek(int(position))
        logger.info("restored step %s from checkpoint", meta.get("step", step))
        self._state_shardings = self.state_shardings(abstract)
        self.state = state
        return state

    # -- training -------------------------------------------------------------------------------

    def evaluate(
        self,
        step: StepFunction,
        data: Iterable[Any],
        *,
        state: TrainState | None = None,
        max_batches: int | None = None,
    ) -> dict[str, float]:
        """Runs an eval step over ``data`` and averages its metrics over batches.

        If the metrics hold ``loss_sum`` and ``count`` (or ``weight``), ``loss`` is their exact
        ratio over all batches instead of a mean of means.

        Raises:
          ExecError: ``data`` yields nothing.
        """
        _check_step(step, kind="eval")
        state = self._state_or_raise(state)
        outputs = []
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            outputs.append(self.step(step, state, batch))
            if FitLoop.must_bound_in_flight():
                jax.block_until_ready(outputs[-1])
        if not outputs:
            raise ExecError(f"Engine.evaluate: eval data for {step.name!r} yielded no batches.")
        host = jax.device_get(outputs)
        keys = host[0].keys()
        result = {k: float(np.mean([float(h[k]) for h in host])) for k in keys}
        weight_key = "count" if "count" in keys else "weight" if "weight" in keys else None
        if "loss_sum" in keys and weight_key is not None:
            total = sum(float(h[weight_key]) for h in host)
            result["loss"] = sum(float(h["loss_sum"]) for h in host) / max(total, 1e-30)
        return result

    def fit(
        self,
        step: StepFunction,
        data: Iterable[Any],
        *,
        steps: int,
        state: TrainState | None = None,
        log_every: int = 10,
        eval_step: StepFunction | None = None,
        eval_data: Callable[[], Iterable[Any]] | Iterable[Any] | None = None,
        eval_every: int | None = None,
        checkpoint_every: int | None = None,
        tokens_per_batch: int | None = None,
        flops_per_token: float | None = None,
        profile_steps: tuple[int, int] | None = None,
        profile_dir: str | None = None,
        progress: bool = True,
    ) -> TrainState:
        """Trains until ``state.step == steps`` (resumed states continue where they stopped).

        Host batches become global arrays (each process supplies its slice); metrics stay on
        device and are fetched in one transfer every ``log_every`` steps, then written to the
        sinks with ``samples_per_s`` (and ``tokens_per_s``, ``mfu`` where known),
        ``step_time_s`` and ``compile_time_s``; a rich progress bar shows them on process 0.
        On the CPU backend of jax < 0.12 each step is awaited before the next is dispatched
        (several in-flight multi-device programs with collectives can abort that runtime);
        elsewhere the loop never blocks between log points. SIGINT (Ctrl-C) and SIGTERM (what
        SLURM and Kubernetes send before killing a job) stop the loop at the next step — with
        several processes at the next log point, on which they all agree — save a checkpoint (if
        a store is set) and raise :class:`TrainingInterrupted` (a ``KeyboardInterrupt``).

        Args:
          step: the training :func:`step_fn`.
          data: iterable of host batches (a :class:`ResumableData` has its position saved).
          steps: the step number to stop at.
          state: the state to start from (default ``engine.state``).
          log_every: steps between metric fetches.
          eval_step: the evaluation :func:`step_fn`, run every ``eval_every`` steps over
            ``eval_data``; its metrics are written with an ``eval_`` prefix.
          eval_data: an iterable of eval batches, or a callable returning a fresh one.
          eval_every: steps between evaluations.
          checkpoint_every: steps between (asynchronous) checkpoint saves; the last step is
            always saved when a store is set.
          tokens_per_batch: tokens in one global batch (default: the size of an integer
            ``"inputs"`` leaf, if any).
          flops_per_token: model FLOPs per token for MFU (e.g. ``gpt_flops_per_token``).
          profile_steps: ``(a, b)`` captures a JAX profiler trace of steps ``a``..``b`` into
            ``profile_dir``.
          progress: show the progress bar.

        Returns:
          The final state (also ``engine.state``).

        Raises:
          NonFiniteError: the loss became NaN/Inf under ``nan_policy="raise"``.
          TrainingInterrupted: stopped by SIGINT or SIGTERM (after saving).
          ExecError: bad arguments (non-positive ``log_every``, eval without data, ...).
        """
        loop = FitLoop(
            self,
            step,
            data,
            steps=steps,
            log_every=log_every,
            eval_step=eval_step,
            eval_data=eval_data,
            eval_every=eval_every,
            checkpoint_every=checkpoint_every,
            tokens_per_batch=tokens_per_batch,
            flops_per_token=flops_per_token,
            profile_steps=profile_steps,
            profile_dir=profile_dir,
            progress=progress,
        )
        self.state = loop.run(self._state_or_raise(state))
        return self.state
