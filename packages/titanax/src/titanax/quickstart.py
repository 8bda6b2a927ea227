"""Quickstarts: from a model and data to a training run in a few lines.

Both functions build the usual pieces — a :class:`~titanax.mesh.MeshSpec` over every device, a
:class:`~titanax.sharding.Plan`, an :class:`~titanax.exec.Engine` with an optax optimizer, a
:class:`~titanax.io.ShardedLoader` over the data — and train. Everything they build is
returned, so a run can be continued or inspected, and everything can be replaced by passing it.

Example:
  >>> from titanax.quickstart import simple_data_parallel
  >>> result = simple_data_parallel(init_fn, loss_fn, {"x": x, "y": y}, batch_size=64,
  ...                               steps=200)
  >>> result.state.step, result.history[-1]["loss"]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import optax
from jax.sharding import PartitionSpec as P

from titanax.exec import Engine, TrainState, step_fn
from titanax.io import OrbaxCheckpointer, ShardedLoader
from titanax.mesh import MeshSpec, TitanaxError
from titanax.sharding import DP, TP, Plan, Rules, tp_rules, tree_paths

__all__ = ["QuickstartError", "QuickstartResult", "simple_data_parallel", "simple_tensor_parallel"]


class QuickstartError(TitanaxError, ValueError):
    """A quickstart was given data or options it cannot use."""


@dataclasses.dataclass
class QuickstartResult:
    """What a quickstart built and ran.

    Attributes:
      state: the final :class:`~titanax.exec.TrainState`.
      engine: the Engine (``engine.fit`` continues the run).
      history: the metrics of every log point (``step``, ``loss``, throughput, ...).
    """

    state: TrainState
    engine: Engine
    history: list[dict[str, float]]


class _History:
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        self.rows.append({"step": float(step), **metrics})

    def close(self) -> None:
        pass


def _loader(data: Any, batch_size: int | None, seed: int) -> Iterable[Any]:
    if isinstance(data, Mapping) or (hasattr(data, "__getitem__") and hasattr(data, "shape")):
        if batch_size is None:
            raise QuickstartError(
                "quickstart: data is a dataset (arrays), so batch_size= (the global batch size) "
                "is required; or pass an iterable of batches."
            )
        return ShardedLoader(data, global_batch_size=batch_size, seed=seed)
    if isinstance(data, Iterable) and not isinstance(data, str | bytes):
        return data
    raise QuickstartError(
        f"quickstart: data must be a dict of arrays, an array, or an iterable of batches; got "
        f"{type(data).__name__}."
    )


def _train(
    mesh: MeshSpec,
    plan: Plan,
    init_fn: Callable[[jax.Array], Any],
    loss_fn: Callable[[Any, Any], Any],
    data: Any,
    *,
    steps: int,
    batch_size: int | None,
    optimizer: optax.GradientTransformation | None,
    learning_rate: float,
    log_every: int,
    checkpoint_dir: str | None,
    seed: int,
) -> QuickstartResult:
    history = _History()
    checkpoint = None if checkpoint_dir is None else OrbaxCheckpointer(checkpoint_dir)
    engine = Engine(
        mesh,
        plan,
        optimizer=optimizer or optax.adamw(learning_rate),
        checkpoint=checkpoint,
        sinks=[history],
    )

    @step_fn
    def train_step(state: TrainState, batch: Any) -> Any:
        loss, grads = state.value_and_grad(loss_fn)(state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    loader = _loader(data, batch_size, seed)
    if plan.tensor_parallel is not None:
        axis = plan.tensor_parallel.axis
        shapes = jax.eval_shape(init_fn, jax.random.key(seed))
        specs = jax.tree.leaves(
            plan.param_specs(shapes, engine.mesh), is_leaf=lambda x: isinstance(x, P)
        )
        if not any(axis in str(spec) for spec in specs):
            raise QuickstartError(
                "simple_tensor_parallel: no tensor-parallel rule matched any parameter, so "
                f"nothing would be split over {axis!r}. Pass rules= for your model's parameter "
                f"paths (these are {tree_paths(shapes)[:6]}...), e.g. tp_rules.hf() or "
                "tp_rules.flax_nnx(), or your own Rules."
            )
    engine.restore_or_create(init_fn, jax.random.key(seed), data=loader)
    state = engine.fit(train_step, loader, steps=steps, log_every=log_every)
    if checkpoint is not None:
        checkpoint.close()
    return QuickstartResult(state=state, engine=engine, history=history.rows)


def simple_data_parallel(
    init_fn: Callable[[jax.Array], Any],
    loss_fn: Callable[[Any, Any], Any],
    data: Any,
    *,
    steps: int,
    batch_size: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float = 1e-3,
    log_every: int = 10,
    checkpoint_dir: str | None = None,
    seed: int = 0,
) -> QuickstartResult:
    """Trains ``loss_fn`` data-parallel over every device (global view; XLA all-reduces grads).

    Args:
      init_fn: ``init_fn(rng) -> params``.
      loss_fn: ``loss_fn(params, batch)`` -> scalar mean loss or ``(loss_sum, weight)``.
      data: a dict of equal-length arrays or an array (batched by a ``ShardedLoader`` with
        ``batch_size``), or an iterable of host batches (leading dim = global batch).
      steps: steps to train (a run restored from ``checkpoint_dir`` continues to ``steps``).
      batch_size: global batch size when ``data`` is a dataset; divisible by the device count.
      optimizer: any optax optimizer (default ``optax.adamw(learning_rate)``).
      learning_rate: for the default optimizer.
      log_every: steps between metric fetches (``history``).
      checkpoint_dir: save checkpoints here and resume from the newest one.
      seed: parameter initialization and data order.

    Returns:
      :class:`QuickstartResult`.

    Raises:
      QuickstartError: data of an unknown kind, or a dataset without ``batch_size``.
      ShardingError: a batch size that does not divide over the devices.
    """
    mesh = MeshSpec(axes=("data",), shape=(-1,))
    return _train(
        mesh,
        Plan(data_parallel=DP("data")),
        init_fn,
        loss_fn,
        data,
        steps=steps,
        batch_size=batch_size,
        optimizer=optimizer,
        learning_rate=learning_rate,
        log_every=log_every,
        checkpoint_dir=checkpoint_dir,
        seed=seed,
    )


def simple_tensor_parallel(
    init_fn: Callable[[jax.Array], Any],
    loss_fn: Callable[[Any, Any], Any],
    data: Any,
    *,
    steps: int,
    tensor: int = 2,
    rules: Rules | None = None,
    batch_size: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float = 1e-3,
    log_every: int = 10,
    checkpoint_dir: str | None = None,
    seed: int = 0,
) -> QuickstartResult:
    """Trains ``loss_fn`` with Megatron tensor parallelism × data parallelism on every device.

    The mesh is ``data=-1 × tensor=tensor``; parameters follow ``rules`` (default
    ``tp_rules.gpt()`` — the naming of ``titanax.models``' GPT), the batch is split over
    ``data``. Other arguments as :func:`simple_data_parallel`.

    Raises:
      QuickstartError: as :func:`simple_data_parallel`, or no rule matches any parameter (no
        tensor parallelism would happen).
      MeshError: ``tensor`` does not divide the device count.
      ShardingError: a parameter dim that does not divide by ``tensor``.
    """
    mesh = MeshSpec(axes=("data", "tensor"), shape=(-1, tensor))
    plan = Plan(
        data_parallel=DP("data"),
        tensor_parallel=TP("tensor", rules=rules if rules is not None else tp_rules.gpt()),
    )
    return _train(
        mesh,
        plan,
        init_fn,
        loss_fn,
        data,
        steps=steps,
        batch_size=batch_size,
        optimizer=optimizer,
        learning_rate=learning_rate,
        log_every=log_every,
        checkpoint_dir=checkpoint_dir,
        seed=seed,
    )
