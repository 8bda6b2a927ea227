"""The training step of each mode, written out as a user would write it.

* ``dp`` — the per-device view (``step_fn(view="per_device")``, ``jax.shard_map`` over the
  mesh): each device computes the loss and gradients of its shard of the batch, and the
  data-parallel reduction is one explicit ``collectives.pmean`` over the data axes.
* ``tp`` — the global view (``jax.jit`` with the plan's shardings): the step is written for one
  device; the plan's data / FSDP / tensor layouts decide where XLA puts the collectives.
* ``pp`` — the global view around ``titanax.pipeline.pipeline_value_and_grad``: embedding
  before the pipeline, the GPT's stacked blocks split into stages by the schedule (GPipe, 1F1B
  or interleaved 1F1B), final norm, head and loss on the last stage; data (and tensor) axes stay
  automatic around it.

``titanax verify`` runs a mode's training step against a reference on one device: the step
itself for ``dp`` and ``tp`` (on a mesh of size 1 the data-parallel ``pmean`` is the identity),
and for ``pp`` the unpipelined model in the global view (:attr:`Recipe.reference_step`).

Evaluation is the same in every mode: a global-view step returning ``loss_sum`` and ``count``
(and ``accuracy`` for classifiers), which ``Engine.evaluate`` turns into the exact mean loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from titanax.cli._build import ModelRecipe
from titanax.cli._config import Mode
from titanax.exec import StepFunction, TrainState, step_fn
from titanax.mesh import collectives
from titanax.models import cross_entropy, gpt_blocks, gpt_embed, gpt_head
from titanax.sharding import Plan

__all__ = ["Recipe", "make_recipe"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """The steps and parameter initializer of one mode.

    Attributes:
      train_step: the training ``step_fn`` (metrics: ``loss``, ``grad_norm``, ``lr``).
      eval_step: the evaluation ``step_fn`` (``loss_sum``, ``count``, ...).
      init: ``init(key) -> params`` (for ``pp``, blocks stacked in the schedule's storage order).
      rngs: names of the PRNG streams the steps use.
      reference_step: the step a 1-device run should match, when it is not ``train_step``
        itself (``pp``: the same model unpipelined, on the same storage-order parameters).
    """

    train_step: StepFunction
    eval_step: StepFunction
    init: Callable[[jax.Array], Any]
    rngs: tuple[str, ...]
    reference_step: StepFunction | None = None


def _extra_metrics(
    grads: Any, state: TrainState, schedule: Callable[[Any], Any] | None
) -> dict[str, jax.Array]:
    metrics = {"grad_norm": optax.tree.norm(grads)}
    if schedule is not None:
        metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    return metrics


def _eval_step(model: ModelRecipe) -> StepFunction:
    @step_fn(kind="eval")
    def eval_step(state: TrainState, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        return model.metrics(state.precision.cast_to_compute(state.params), batch)

    return eval_step


def _dp(model: ModelRecipe, plan: Plan, schedule: Callable[[Any], Any] | None) -> Recipe:
    axes = plan.data_axes

    @step_fn(view="per_device")
    def train_step(state: TrainState, batch: Mapping[str, Any]) -> tuple[TrainState, Any]:
        key = state.rng("dropout") if model.uses_dropout else None

        def loss_fn(params: Any, b: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
            return model.loss(params, b, key, True)

        # This device's shard of the batch: its own mean loss and gradients ...
        loss, grads = state.value_and_grad(loss_fn)(state.params, batch)
        # ... averaged over the data-parallel axes: the one reduction of the step, explicit.
        grads = collectives.pmean(grads, axes)
        loss = collectives.pmean(loss, axes)
        metrics = {"loss": loss, **_extra_metrics(grads, state, schedule)}
        return state.apply_gradients(grads=grads), metrics

    return Recipe(
        train_step=train_step,
        eval_step=_eval_step(model),
        init=model.init,
        rngs=("dropout",) if model.uses_dropout else (),
    )


def _tp(model: ModelRecipe, schedule: Callable[[Any], Any] | None) -> Recipe:
    @step_fn
    def train_step(state: TrainState, batch: Mapping[str, Any]) -> tuple[TrainState, Any]:
        key = state.rng("dropout") if model.uses_dropout else None

        def loss_fn(params: Any, b: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
            return model.loss(params, b, key, True)

        loss, grads = state.value_and_grad(loss_fn)(state.params, batch)
        metrics = {"loss": loss, **_extra_metrics(grads, state, schedule)}
        return state.apply_gradients(grads=grads), metrics

    return Recipe(
        train_step=train_step,
        eval_step=_eval_step(model),
        init=model.init,
        rngs=("dropout",) if model.uses_dropout else (),
    )


def _pp(
    model: ModelRecipe, plan: Plan, mesh: jax.sharding.Mesh, schedule: Callable[[Any], Any] | None
) -> Recipe:
    from titanax.pipeline import (
        Schedule,
        pipeline_value_and_grad,
        to_natural_order,
        to_storage_order,
    )

    cfg = model.gpt
    pp = plan.pipeline_parallel
    if cfg is None or pp is None:  # excluded by validation; kept for type narrowing
        raise ValueError("pp mode needs a GPT model and plan.pp")
    table = Schedule.from_pp(pp)

    def pre(rest: Mapping[str, Any], inputs: jax.Array) -> jax.Array:
        return gpt_embed(rest, inputs, config=cfg)

    def stage(chunk: Any, x: jax.Array) -> jax.Array:
        return gpt_blocks(chunk, x, config=cfg)

    def post(rest: Any, y: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
        return cross_entropy(gpt_head(rest, y, config=cfg), targets)

    value_and_grad = pipeline_value_and_grad(
        pre, stage, post, mesh=mesh, schedule=table, axis=pp.axis, activations=pp.activations
    )

    @step_fn
    def train_step(state: TrainState, batch: Mapping[str, Any]) -> tuple[TrainState, Any]:
        params = state.precision.cast_to_compute(state.params)
        loss, grads = value_and_grad(params, batch["inputs"], batch["targets"])
        metrics = {"loss": loss.astype(jnp.float32), **_extra_metrics(grads, state, schedule)}
        return state.apply_gradients(grads=grads), metrics

    @step_fn(kind="eval")
    def eval_step(state: TrainState, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        params = dict(state.precision.cast_to_compute(state.params))
        params["blocks"] = to_natural_order(params["blocks"], table)  # the whole model, in order
        return model.metrics(params, batch)

    def init(key: jax.Array) -> Any:
        params = dict(model.init(key))
        params["blocks"] = to_storage_order(params["blocks"], table)
        return params

    @step_fn
    def unpipelined_step(state: TrainState, batch: Mapping[str, Any]) -> tuple[TrainState, Any]:
        def loss_fn(params: Any, b: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
            params = dict(params)
            params["blocks"] = to_natural_order(params["blocks"], table)
            return model.loss(params, b, None, True)

        loss, grads = state.value_and_grad(loss_fn)(state.params, batch)
        metrics = {"loss": loss, **_extra_metrics(grads, state, schedule)}
        return state.apply_gradients(grads=grads), metrics

    return Recipe(
        train_step=train_step,
        eval_step=eval_step,
        init=init,
        rngs=(),
        reference_step=unpipelined_step,
    )


def make_recipe(
    mode: Mode,
    model: ModelRecipe,
    *,
    plan: Plan,
    mesh: jax.sharding.Mesh,
    schedule: Callable[[Any], Any] | None = None,
) -> Recipe:
    """The :class:`Recipe` of ``mode`` for ``model`` on ``mesh`` under ``plan``.

    Args:
      mode: ``"dp"``, ``"tp"`` or ``"pp"``.
      model: from :func:`titanax.cli._build.build_model` (stacked GPT blocks for ``pp``).
      plan: the plan (its data axes for ``dp``; its PP record for ``pp``).
      mesh: the mesh (the pipeline executor needs it).
      schedule: the learning-rate schedule, logged as ``lr``.
    """
    if mode == "dp":
        return _dp(model, plan, schedule)
    if mode == "tp":
        return _tp(model, schedule)
    return _pp(model, plan, mesh, schedule)
