"""``TrainState``: parameters, optimizer state, step, PRNG streams and loss scale as one pytree.

The state is what a compiled step takes and returns (donated, with identical shardings in and
out). Besides the arrays it carries static (non-array) context — the optimizer, the precision
policy, the step's remat policy and the layout the Engine pinned — so that ``apply_gradients``
and ``value_and_grad`` inside a step do the right thing for the plan without extra arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from titanax.exec._errors import ExecError, StateError
from titanax.exec._precision import LossScale, Precision
from titanax.exec._remat import remat
from titanax.sharding import constrain

__all__ = ["StepContext", "TrainState"]


@dataclasses.dataclass(frozen=True)
class _FrozenTree:
    """A pytree of hashable leaves (shardings) made hashable, for static fields."""

    treedef: Any
    leaves: tuple[Any, ...]

    @classmethod
    def of(cls, tree: Any) -> _FrozenTree:
        leaves, treedef = jax.tree.flatten(tree)
        return cls(treedef, tuple(leaves))

    def tree(self) -> Any:
        return jax.tree.unflatten(self.treedef, self.leaves)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepContext:
    """Static facts about the step being traced (set by the Engine; defaults outside it).

    Attributes:
      view: ``"global"`` (``jax.jit`` over global arrays) or ``"per_device"`` (``jax.shard_map``).
      data_axes: mesh axes the batch is split over (folded into PRNG keys in the per-device view).
      accumulate_steps: microbatches ``value_and_grad`` accumulates over (``DP.accumulate_steps``).
      remat: the step's activation-checkpointing policy (see ``titanax.exec.remat``).
      skip_nonfinite: skip (do not apply) updates whose gradients are not finite.
      param_shardings: storage layout of the params (global view); gradients and params are
        constrained to it in ``apply_gradients`` so FSDP reduce-scatters gradients.
    """

    view: str = "global"
    data_axes: tuple[str, ...] = ()
    accumulate_steps: int = 1
    remat: str | tuple[str, ...] | None = None
    skip_nonfinite: bool = False
    param_shardings: _FrozenTree | None = None


def _is_floating(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Training state as a pytree; any ``optax.GradientTransformation`` drives the update.

    Array fields (pytree children): ``params``, ``opt_state``, ``step`` (int32 scalar: updates
    attempted so far), ``rngs`` (name -> uint32[2] raw key data of each PRNG stream),
    ``loss_scale`` (:class:`LossScale`), ``skipped`` (int32 count of updates skipped because
    gradients were not finite). Static fields: ``tx``, ``precision``, ``context``.

    Hyper-parameters that change during a run (the learning rate) must live in the state, not in
    closures, so the step never recompiles: use an optax schedule (it reads ``opt_state``'s
    count) or ``optax.inject_hyperparams`` and :meth:`with_hyperparams`.

    Example:
      >>> state = TrainState.create(params=params, tx=optax.adamw(3e-4),
      ...                           rngs={"dropout": jax.random.key(1)})
      >>> loss, grads = state.value_and_grad(loss_fn)(state.params, batch)
      >>> state = state.apply_gradients(grads=grads)
    """

    params: Any
    opt_state: Any
    step: jax.Array
    rngs: dict[str, jax.Array]
    loss_scale: LossScale
    skipped: jax.Array
    tx: optax.GradientTransformation = dataclasses.field(metadata={"static": True})
    precision: Precision = dataclasses.field(metadata={"static": True})
    context: StepContext = dataclasses.field(metadata={"static": True})

    @classmethod
    def create(
        cls,
        *,
        params: Any,
        tx: optax.GradientTransformation,
        rngs: Mapping[str, jax.Array] | None = None,
        precision: Precision | None = None,
    ) -> TrainState:
        """Builds a state: params cast to ``precision.param_dtype``, ``tx.init(params)``.

        Args:
          params: pytree of arrays (any sharding; the Engine builds it sharded).
          tx: the optimizer.
          rngs: named PRNG keys (typed ``jax.random.key`` or raw uint32[2] data).
          precision: dtype policy (default fp32).

        Raises:
          StateError: ``tx`` is not an optax GradientTransformation, or a key is not a PRNG key.
        """
        if not (hasattr(tx, "init") and hasattr(tx, "update")):
            raise StateError(
                f"TrainState.create: tx={tx!r} is not an optax.GradientTransformation (needs "
                "init and update); pass e.g. optax.adamw(3e-4)."
            )
        precision = precision or Precision()
        params = precision.cast_to_param(params)
        raw: dict[str, jax.Array] = {}
        for name, key in (rngs or {}).items():
            raw[name] = _key_data(name, key)
        return cls(
            params=params,
            opt_state=tx.init(params),
            step=jnp.asarray(0, jnp.int32),
            rngs=raw,
            loss_scale=precision.initial_loss_scale(),
            skipped=jnp.asarray(0, jnp.int32),
            tx=tx,
            precision=precision,
            context=StepContext(),
        )

    def replace(self, **changes: Any) -> TrainState:
        """A copy with fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    # -- PRNG -----------------------------------------------------------------------------------

    def rng(self, name: str) -> jax.Array:
        """The typed PRNG key of stream ``name`` for this step.

        The stream's key is folded with the step number; in the per-device view it is also
        folded with this device's index along the data axes only — dropout masks are equal
        across tensor shards (which hold the same examples) and differ across data shards.

        Raises:
          StateError: ``name`` is not a stream of this state.
        """
        if name not in self.rngs:
            raise StateError(
                f"TrainState.rng: no PRNG stream {name!r}; streams are {sorted(self.rngs)}. "
                "Create it with TrainState.create(rngs={...}) or Engine.create_state(rngs=...)."
            )
        key = jax.random.fold_in(jax.random.wrap_key_data(self.rngs[name]), self.step)
        if self.context.view == "per_device" and self.context.data_axes:
            key = jax.random.fold_in(key, lax.axis_index(self.context.data_axes))
        return key

    # -- remat ----------------------------------------------------------------------------------

    def remat(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wraps a repeated block ``fn`` with this step's activation-checkpointing policy."""
        return remat(fn, self.context.remat)

    # -- gradients ------------------------------------------------------------------------------

    def value_and_grad(
        self,
        loss_fn: Callable[..., Any],
        *,
        has_aux: bool = False,
        reduce_axes: str | Sequence[str] = (),
    ) -> Callable[..., Any]:
        """Like ``jax.value_and_grad``, plus precision, loss scaling and accumulation.

        ``loss_fn(params, *args)`` returns a scalar mean loss, or ``(loss_sum, weight)`` — the sum
        of per-example losses times their mask and the sum of the mask — or either of these with
        an aux pytree when ``has_aux``. The returned function:

        * casts params (and floating args) to ``precision.compute_dtype``; gradients come back in
          the param dtype (fp32 master weights);
        * multiplies the loss by the loss scale before differentiating (fp16) and divides the
          gradients by it after (non-finite gradients are left for ``apply_gradients`` to skip);
        * with ``accumulate_steps = k > 1`` splits every arg's leading (batch) dim into ``k``
          microbatches (row ``r`` goes to microbatch ``r mod k``, so each stays evenly sharded)
          and runs them in a ``lax.scan``, summing ``loss_sum``, ``weight`` and gradients;
        * with ``reduce_axes`` (per-device view only) ``psum``s the three sums over those mesh
          axes — the explicit data-parallel reduction;
        * divides once, at the end: ``loss = Σ loss_sum / Σ weight``, ``grads = Σ g / Σ weight``,
          so ragged masks give exactly the full-batch result. A scalar mean loss counts as
          ``(loss, 1)`` per microbatch.

        Returns:
          ``fn(params, *args) -> (loss, grads)`` or ``((loss, aux), grads)``; ``loss`` fp32.
          With accumulation, ``aux`` is the mean of the microbatches' aux values.

        Raises:
          ExecError: ``loss_fn`` returns something else, ``reduce_axes`` in the global view, or
            a batch dim that does not divide by ``accumulate_steps`` (naming both).
        """
        axes = (reduce_axes,) if isinstance(reduce_axes, str) else tuple(reduce_axes)
        if axes and self.context.view != "per_device":
            raise ExecError(
                f"value_and_grad(reduce_axes={axes}): reductions over mesh axes exist only in "
                "the per-device view (step_fn(view='per_device')); in the global view gradients "
                "are already global."
            )
        precision = self.precision
        scale = self.loss_scale.scale
        k = self.context.accumulate_steps

        def split_output(out: Any) -> tuple[jax.Array, jax.Array, Any]:
            value, aux = out if has_aux else (out, None)
            if isinstance(value, tuple | list) and len(value) == 2:
                loss_sum, weight = value
            else:
                loss_sum, weight = value, jnp.ones((), jnp.float32)
            loss_sum, weight = jnp.asarray(loss_sum), jnp.asarray(weight)
            if jnp.ndim(loss_sum) != 0 or jnp.ndim(weight) != 0:
                raise ExecError(
                    "value_and_grad: loss_fn must return a scalar mean loss or a (loss_sum, "
                    f"weight) pair of scalars, got shapes {jnp.shape(loss_sum)} and "
                    f"{jnp.shape(weight)}."
                )
            return loss_sum.astype(jnp.float32), weight.astype(jnp.float32), aux

        def scaled_loss(params: Any, *args: Any) -> tuple[jax.Array, Any]:
            out = loss_fn(precision.cast_to_compute(params), *precision.cast_to_compute(args))
            loss_sum, weight, aux = split_output(out)
            return loss_sum * scale, (loss_sum, weight, aux)

        grad_fn = jax.grad(scaled_loss, has_aux=True)

        def run(params: Any, *args: Any) -> Any:
            if k == 1:
                grads, (loss_sum, weight, aux) = grad_fn(params, *args)
            else:
                micro = jax.tree.map(lambda x: _microbatches(x, k), args)
                zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

                def body(carry: Any, batch: Any) -> tuple[Any, Any]:
                    g_sum, l_sum, w_sum = carry
                    g, (loss_sum, weight, aux) = grad_fn(params, *batch)
                    g_sum = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_sum, g)
                    return (g_sum, l_sum + loss_sum, w_sum + weight), aux

                init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
                (grads, loss_sum, weight), auxes = lax.scan(body, init, micro)
                aux = None if auxes is None else jax.tree.map(lambda a: a.mean(0), auxes)
            if axes:
                grads, loss_sum, weight = lax.psum((grads, loss_sum, weight), axes)
            inv = 1.0 / (scale * weight)
            grads = jax.tree.map(
                lambda g, p: (g.astype(jnp.float32) * inv).astype(p.dtype), grads, params
            )
            loss = (loss_sum / weight).astype(jnp.dtype(precision.output_dtype))
            return ((loss, aux), grads) if has_aux else (loss, grads)

        return run

    def apply_gradients(self, *, grads: Any, **changes: Any) -> TrainState:
        """One optimizer update: ``tx.update`` then ``optax.apply_updates``; ``step + 1``.

        In the global view, gradients and params are first constrained to the planned param
        layout (for FSDP this is the reduce-scatter of the gradients). Gradients that are not
        finite on any device skip the update (params and optimizer state unchanged; the same
        decision everywhere) when loss scaling is dynamic or the NaN policy skips; the loss
        scale is then updated.

        Args:
          grads: pytree with the structure of ``params``.
          **changes: other fields to replace in the returned state.

        Raises:
          StateError: ``grads`` has another structure than ``params``.
        """
        p_struct, g_struct = jax.tree.structure(self.params), jax.tree.structure(grads)
        if str(p_struct) != str(g_struct):
            raise StateError(
                "TrainState.apply_gradients: grads do not have the structure of params:\n"
                f"  params: {p_struct}\n  grads:  {g_struct}"
            )
        mismatched = [
            f"{jax.tree_util.keystr(path)}: grad {tuple(g.shape)} vs param {tuple(p.shape)}"
            for (path, g), p in zip(
                jax.tree_util.tree_flatten_with_path(grads)[0],
                jax.tree.leaves(self.params),
                strict=True,
            )
            if tuple(g.shape) != tuple(p.shape)
        ]
        if mismatched:
            raise StateError(
                "TrainState.apply_gradients: gradient shapes differ from the parameters': "
                + "; ".join(mismatched[:5])
            )
        params = self.params
        if self.context.param_shardings is not None:
            shardings = self.context.param_shardings.tree()
            grads = constrain_to(grads, shardings)
            params = constrain_to(params, shardings)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        updates, opt_state = self.tx.update(grads, self.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        skip = self.precision.dynamic_scaling or self.context.skip_nonfinite
        if not skip:  # nothing depends on finiteness: no extra pass over the gradients
            return dataclasses.replace(
                self, params=new_params, opt_state=opt_state, step=self.step + 1, **changes
            )
        finite = _all_finite(grads)
        if self.context.view == "per_device":
            manual = tuple(getattr(jax.sharding.get_abstract_mesh(), "manual_axes", ()))
            if manual:  # the same decision on every device
                finite = lax.pmin(finite.astype(jnp.int32), manual).astype(bool)
        return dataclasses.replace(
            self,
            params=_select(finite, new_params, params),
            opt_state=_select(finite, opt_state, self.opt_state),
            step=self.step + 1,
            loss_scale=self.precision.update_loss_scale(self.loss_scale, finite),
            skipped=self.skipped + jnp.where(finite, 0, 1).astype(jnp.int32),
            **changes,
        )

    def with_hyperparams(self, **values: float) -> TrainState:
        """Sets hyper-parameters of an ``optax.inject_hyperparams`` optimizer (no recompile).

        Raises:
          StateError: the optimizer state has no ``hyperparams`` or lacks one of the names.
        """
        hyper = getattr(self.opt_state, "hyperparams", None)
        if not isinstance(hyper, dict):
            raise StateError(
                "TrainState.with_hyperparams: the optimizer state has no hyperparams; build the "
                "optimizer with optax.inject_hyperparams(optax.adamw)(learning_rate=...)."
            )
        unknown = sorted(set(values) - set(hyper))
        if unknown:
            raise StateError(
                f"TrainState.with_hyperparams: unknown {unknown}; the optimizer has "
                f"{sorted(hyper)}."
            )
        new = dict(hyper)
        for name, value in values.items():
            old = hyper[name]
            new[name] = jax.device_put(jnp.asarray(value, old.dtype), old.sharding)
        return dataclasses.replace(self, opt_state=self.opt_state._replace(hyperparams=new))


def constrain_to(tree: Any, shardings: Any) -> Any:
    """Constrains ``tree`` to a matching tree of ``NamedSharding`` (Auto or Explicit axes)."""
    leaves = jax.tree.leaves(shardings)
    if not leaves:
        return tree
    specs = jax.tree.map(lambda s: s.spec, shardings)
    return constrain(tree, leaves[0].mesh, specs)


def _key_data(name: str, key: Any) -> jax.Array:
    array: jax.Array = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(array.dtype, jax.dtypes.prng_key):
        data: jax.Array = jax.random.key_data(array)
        return data
    if array.dtype == jnp.uint32 and array.shape[-1:] == (2,):
        return array
    key = array
    raise StateError(
        f"TrainState: rngs[{name!r}] is {key.dtype}{list(key.shape)}, not a PRNG key; pass "
        "jax.random.key(seed)."
    )


def _microbatches(x: jax.Array, k: int) -> jax.Array:
    if jnp.ndim(x) == 0:
        raise ExecError(
            "value_and_grad with accumulate_steps="
            f"{k}: every argument after params must have a leading batch dim; got a scalar."
        )
    batch = x.shape[0]
    if batch % k:
        raise ExecError(
            f"value_and_grad: batch dim {batch} (shape {x.shape}) does not divide into "
            f"accumulate_steps={k} microbatches; use a batch size that is a multiple of {k}."
        )
    # Row r -> microbatch r % k: each microbatch keeps every device's share of the batch.
    return jnp.swapaxes(x.reshape(batch // k, k, *x.shape[1:]), 0, 1)


def _all_finite(tree: Any) -> jax.Array:
    checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if _is_floating(x)]
    if not checks:
        return jnp.asarray(True)
    return jnp.stack(checks).all()


def _select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)
