"""Config records -> Titanax objects: mesh, plan, optimizer, precision and the model's functions.

Imported only after the device count is fixed (it imports JAX and every Titanax package). Each
builder reports its problems as :class:`~titanax.cli.Problem` at the config path it came from,
so ``titanax validate`` can list them together with the schema problems.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from titanax.cli._arguments import check_kwargs
from titanax.cli._config import (
    CNNModel,
    Config,
    DataConfig,
    FlaxNNXModel,
    GPTModel,
    MeshConfig,
    MLPModel,
    Mode,
    ModelConfig,
    OptimizerConfig,
    PlanConfig,
    token_geometry,
)
from titanax.cli._convert import closest
from titanax.cli._errors import Problem
from titanax.cli._yaml import Locations, Path, format_path, locate
from titanax.exec import Precision
from titanax.mesh import MeshSpec
from titanax.models import (
    CNNConfig,
    GPTConfig,
    MLPConfig,
    cnn_apply,
    cnn_init,
    cross_entropy,
    gpt_apply,
    gpt_flops_per_token,
    gpt_init,
    gpt_param_count,
    mlp_apply,
    mlp_init,
)
from titanax.sharding import DP, FSDP, PP, TP, Plan, Rules, tp_rules

__all__ = [
    "ModelRecipe",
    "Problems",
    "build_mesh",
    "build_model",
    "build_optimizer",
    "build_plan",
    "build_precision",
    "data_geometry",
]


class Problems:
    """Collects located problems while building (shared by the builders below)."""

    def __init__(self, locations: Locations) -> None:
        self.locations = locations
        self.items: list[Problem] = []

    def add(self, path: Path, message: str) -> None:
        self.items.append(
            Problem(path=format_path(path), message=message, location=locate(self.locations, path))
        )

    def add_lines(self, path: Path, error: Exception) -> None:
        """One problem per line of a multi-line Titanax error (its ``- `` bullets)."""
        lines = [line.strip().removeprefix("- ") for line in str(error).splitlines()]
        bullets = [line for line in lines[1:] if line] if len(lines) > 1 else lines
        for line in bullets:
            self.add(path, line)


# -- mesh, plan, precision, optimizer ---------------------------------------------------------


def build_mesh(m: MeshConfig) -> MeshSpec:
    """The ``MeshSpec`` of the ``mesh`` section."""
    return MeshSpec(axes=m.axes, shape=m.shape, axis_types=m.axis_types)


def build_plan(plan: PlanConfig, *, mode: Mode) -> Plan:
    """The ``Plan`` of the ``plan`` section.

    The ``tp.rules: gpt`` preset is ``tp_rules.gpt(axis)``; in ``pp`` mode the GPT's blocks are
    stacked, so it becomes ``tp_rules.gpt(axis, stacked=True)`` and the PP record shards their
    leading (layer) dim over the pipeline axis. ``flax_nnx`` and ``hf`` are
    ``tp_rules.flax_nnx(axis)`` and ``tp_rules.hf(axis)``.

    Raises:
      ShardingError: a record or rule ``titanax.sharding`` rejects.
    """
    tp = None
    if plan.tp is not None:
        preset = plan.tp.rules
        if isinstance(preset, dict):
            rules = Rules(list(preset.items()))
        elif preset == "flax_nnx":
            rules = tp_rules.flax_nnx(plan.tp.axis)
        elif preset == "hf":
            rules = tp_rules.hf(plan.tp.axis)
        else:
            rules = tp_rules.gpt(plan.tp.axis, stacked=mode == "pp")
        tp = TP(plan.tp.axis, rules=rules)
    pp = None
    if plan.pp is not None:
        p = plan.pp
        pp = PP(
            p.axis,
            stages=p.stages,
            microbatches=p.microbatches,
            schedule=p.schedule,
            virtual_stages=p.virtual_stages,
            activations=p.activations,
        )
    return Plan(
        data_parallel=None
        if plan.dp is None
        else DP(plan.dp.axis, accumulate_steps=plan.dp.accumulate_steps),
        fsdp=None
        if plan.fsdp is None
        else FSDP(plan.fsdp.axis, min_size_bytes=plan.fsdp.min_size_bytes, zero1=plan.fsdp.zero1),
        tensor_parallel=tp,
        pipeline_parallel=pp,
        rules=Rules(list(plan.rules.items())),
        indivisible=plan.indivisible,
    )


def build_precision(config: Config) -> Precision:
    """The ``Precision`` of the ``precision`` section."""
    p = config.precision
    return Precision(
        param_dtype=p.param_dtype,
        compute_dtype=p.compute_dtype,
        output_dtype=p.output_dtype,
        loss_scaling=p.loss_scaling,
    )


def _optax_names() -> list[str]:
    return [n for n in dir(optax) if n[:1].islower() and callable(getattr(optax, n))]


def build_optimizer(
    config: OptimizerConfig, problems: Problems
) -> tuple[optax.GradientTransformation | None, Callable[[Any], Any] | None]:
    """``optax.<name>(learning_rate=<schedule or rate>, **kwargs)``, optionally clipped first.

    The kwargs of the schedule and of the optimizer are checked against the optax functions'
    signatures first (:func:`titanax.cli._arguments.check_kwargs`): unknown names (with the
    closest valid one), missing required arguments and values of the wrong type are reported
    at their config paths, all of them together.

    Returns:
      ``(optimizer, schedule)``; ``(None, None)`` after recording problems.
    """
    base: Path = ("optimizer",)
    schedule = None
    learning_rate: Any = config.rate
    ok = True
    if config.schedule is not None:
        name = config.schedule.name
        factory = getattr(optax, name, None) or getattr(optax, f"{name}_schedule", None)
        if not callable(factory) or name.startswith("_"):
            names = [n for n in _optax_names() if "schedule" in n]
            hint = closest(name, names) or closest(f"{name}_schedule", names)
            problems.add(
                (*base, "schedule", "name"),
                f"optax has no schedule {name!r}"
                + (f"; did you mean {hint!r}?" if hint else f" (schedules: {', '.join(names)})."),
            )
            ok = False
        else:
            where: Path = (*base, "schedule", "kwargs")
            kwargs = check_kwargs(
                factory,
                config.schedule.kwargs,
                call=f"optax.{factory.__name__}",
                field=format_path(where),
                add=lambda path, message: problems.add((*where, *path), message),
            )
            if kwargs is None:
                ok = False
            else:
                try:
                    schedule = factory(**kwargs)
                except (TypeError, ValueError) as err:
                    problems.add(where, f"optax.{factory.__name__}(**kwargs) rejected them: {err}")
                    ok = False
                learning_rate = schedule
    factory = getattr(optax, config.name, None)
    if not callable(factory) or config.name.startswith("_"):
        hint = closest(config.name, _optax_names())
        problems.add(
            (*base, "name"),
            f"optax has no optimizer {config.name!r}"
            + (f"; did you mean {hint!r}?" if hint else "."),
        )
        return None, None
    kwargs = check_kwargs(
        factory,
        config.kwargs,
        call=f"optax.{config.name}",
        field="optimizer.kwargs",
        add=lambda path, message: problems.add((*base, "kwargs", *path), message),
        passed=("learning_rate",),
    )
    if kwargs is None or not ok:
        return None, None
    try:
        tx = factory(learning_rate=learning_rate, **kwargs)
    except (TypeError, ValueError) as err:
        problems.add(
            (*base, "kwargs"),
            f"optax.{config.name}(learning_rate=..., **kwargs) rejected them: {err}",
        )
        return None, None
    if not (hasattr(tx, "init") and hasattr(tx, "update")):
        problems.add(
            (*base, "name"),
            f"optax.{config.name}(...) returned {type(tx).__name__}, not a "
            "GradientTransformation; name an optimizer such as adamw, sgd or lion.",
        )
        return None, None
    if config.clip_grad_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), tx)
    return tx, schedule


# -- models -------------------------------------------------------------------------------------


def data_geometry(data: DataConfig) -> tuple[tuple[int, int], int]:
    """``((H, W), classes)`` of an image source, known without reading the data."""
    return ((28, 28), 10) if data.source == "mnist_idx" else ((8, 8), 10)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelRecipe:
    """What the training recipes need from a model.

    Attributes:
      init: ``init(key) -> params`` (pure; traced by ``jax.eval_shape`` and ``jax.jit``).
      loss: ``loss(params, batch, key, train) -> (loss_sum, count)`` over a (local) batch.
      metrics: ``metrics(params, batch) -> {"loss_sum", "count", ...}`` for evaluation.
      batch: the global batch as ``jax.ShapeDtypeStruct``s (dry runs and validation).
      gpt: the ``GPTConfig`` (``None`` for other models).
      flops_per_token: training FLOPs per token (GPT), for MFU.
      uses_dropout: the loss draws dropout masks (the state carries a ``"dropout"`` stream).
      summary: one line describing the model.
    """

    init: Callable[[jax.Array], Any]
    loss: Callable[[Any, Mapping[str, Any], jax.Array | None, bool], tuple[jax.Array, jax.Array]]
    metrics: Callable[[Any, Mapping[str, Any]], dict[str, jax.Array]]
    batch: dict[str, jax.ShapeDtypeStruct]
    gpt: GPTConfig | None
    flops_per_token: float | None
    uses_dropout: bool
    summary: str


def _gpt(model: GPTModel, batch_size: int, *, stacked: bool) -> ModelRecipe:
    cfg = GPTConfig(
        vocab_size=model.vocab_size,
        seq_len=model.seq_len,
        d_model=model.d_model,
        n_heads=model.n_heads,
        n_layers=model.n_layers,
        d_ff=model.d_ff,
        dropout=model.dropout,
        init_std=model.init_std,
    )

    def loss(
        params: Any, batch: Mapping[str, Any], key: jax.Array | None, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        logits = gpt_apply(params, batch["inputs"], config=cfg, key=key, train=train)
        return cross_entropy(logits, batch["targets"])

    def metrics(params: Any, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        total, count = loss(params, batch, None, False)
        return {"loss_sum": total, "count": count}

    tokens = jax.ShapeDtypeStruct((batch_size, model.seq_len), jnp.int32)
    n = gpt_param_count(cfg)
    return ModelRecipe(
        init=lambda key: gpt_init(cfg, key, stacked=stacked),
        loss=loss,
        metrics=metrics,
        batch={"inputs": tokens, "targets": tokens},
        gpt=cfg,
        flops_per_token=float(gpt_flops_per_token(cfg)),
        uses_dropout=model.dropout > 0,
        summary=(
            f"model: GPT, {n / 1e6:.2f}M parameters ({model.n_layers} layers, d_model "
            f"{model.d_model}, {model.n_heads} heads, d_ff {cfg.mlp_dim}, sequence "
            f"{model.seq_len}, vocab {model.vocab_size}" + (", stacked blocks)" if stacked else ")")
        ),
    )


def _classifier(model: MLPModel | CNNModel, data: DataConfig, batch_size: int) -> ModelRecipe:
    (h, w), classes = data_geometry(data)
    init: Callable[[jax.Array], Any]
    apply: Callable[[Any, jax.Array], jax.Array]
    if isinstance(model, MLPModel):
        mlp = MLPConfig(sizes=(h * w, *model.hidden, classes), activation=model.activation)

        def init(key: jax.Array) -> Any:
            return mlp_init(mlp, key)

        def apply(params: Any, x: jax.Array) -> jax.Array:
            return mlp_apply(params, x.reshape(x.shape[0], -1), config=mlp)

        summary = f"model: MLP {' → '.join(str(s) for s in mlp.sizes)} ({model.activation})"
    else:
        cnn = CNNConfig(
            image_size=h, channels=model.channels, num_classes=classes, hidden=model.hidden
        )

        def init(key: jax.Array) -> Any:
            return cnn_init(cnn, key)

        def apply(params: Any, x: jax.Array) -> jax.Array:
            return cnn_apply(params, x[..., None], config=cnn)

        summary = (
            f"model: CNN, conv channels {list(model.channels)}, dense {model.hidden}, "
            f"{classes} classes on {h}×{w} images"
        )
    return _classification(init, apply, data, batch_size, summary)


def _classification(
    init: Callable[[jax.Array], Any],
    apply: Callable[[Any, jax.Array], jax.Array],
    data: DataConfig,
    batch_size: int,
    summary: str,
) -> ModelRecipe:
    """The recipe of an image classifier ``apply(params, x [B, H, W]) -> logits [B, classes]``."""
    (h, w), _ = data_geometry(data)

    def loss(
        params: Any, batch: Mapping[str, Any], key: jax.Array | None, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        del key, train
        return cross_entropy(apply(params, batch["x"]), batch["y"])

    def metrics(params: Any, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        logits = apply(params, batch["x"])
        total, count = cross_entropy(logits, batch["y"])
        correct = jnp.sum(jnp.argmax(logits, axis=-1) == batch["y"]).astype(jnp.float32)
        return {"loss_sum": total, "count": count, "accuracy": correct / count}

    return ModelRecipe(
        init=init,
        loss=loss,
        metrics=metrics,
        batch={
            "x": jax.ShapeDtypeStruct((batch_size, h, w), jnp.float32),
            "y": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
        },
        gpt=None,
        flops_per_token=None,
        uses_dropout=False,
        summary=summary,
    )


def _flax_nnx(
    model: FlaxNNXModel, data: DataConfig, batch_size: int, base_dir: pathlib.Path | None
) -> ModelRecipe:
    from titanax.cli._flax import flax_nnx_parts

    init, apply, summary = flax_nnx_parts(model, base_dir=base_dir)
    tokens_of = token_geometry(model)
    if tokens_of is None:
        return _classification(init, apply, data, batch_size, summary)

    def loss(
        params: Any, batch: Mapping[str, Any], key: jax.Array | None, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        del key, train
        return cross_entropy(apply(params, batch["inputs"]), batch["targets"])

    def metrics(params: Any, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        total, count = loss(params, batch, None, False)
        return {"loss_sum": total, "count": count}

    tokens = jax.ShapeDtypeStruct((batch_size, tokens_of[1]), jnp.int32)
    return ModelRecipe(
        init=init,
        loss=loss,
        metrics=metrics,
        batch={"inputs": tokens, "targets": tokens},
        gpt=None,
        flops_per_token=None,
        uses_dropout=False,
        summary=summary,
    )


def build_model(
    model: ModelConfig, data: DataConfig, *, mode: Mode, base_dir: pathlib.Path | None = None
) -> ModelRecipe:
    """The :class:`ModelRecipe` of the ``model`` section (GPT blocks stacked in ``pp`` mode).

    Args:
      model: the ``model`` section.
      data: the ``data`` section (batch size; image geometry of classifiers).
      mode: ``"dp"``, ``"tp"`` or ``"pp"``.
      base_dir: where relative ``model.module`` files of ``kind: flax_nnx`` are read from (the
        config file's directory).

    Raises:
      ModelError: a configuration ``titanax.models`` rejects.
      ConfigError: a ``flax_nnx`` module that cannot be loaded or built (see
        :mod:`titanax.cli._flax`).
    """
    if isinstance(model, GPTModel):
        return _gpt(model, data.batch_size, stacked=mode == "pp")
    if isinstance(model, FlaxNNXModel):
        return _flax_nnx(model, data, data.batch_size, base_dir)
    return _classifier(model, data, data.batch_size)


def param_bytes(shapes: Any) -> int:
    """Total bytes of a tree of ``ShapeDtypeStruct``s."""
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(shapes))
