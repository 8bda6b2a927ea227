"""The configuration schema of ``titanax run``: frozen, typed records, one per YAML section.

A config file has the sections ``run``, ``mesh``, ``plan``, ``model``, ``data``, ``optimizer``,
``precision``, ``checkpoint`` and ``logging``; every key of every section is a field below, with
its type and default. :func:`titanax.cli.load_config` reads YAML into these records (checking
every key and type, with the file line of each problem); the records check their own values in
``__post_init__`` and report problems per field. Nothing here imports JAX.

Example (``examples/configs/gpt_small_tp.yaml``, abridged)::

    run: {name: gpt_small_tp, dir: runs/gpt_small_tp, steps: 300, cpu_devices: 8}
    mesh: {axes: [data, tensor], shape: [4, 2]}
    plan: {dp: {axis: data}, tp: {axis: tensor, rules: gpt}}
    model: {kind: gpt, vocab_size: 256, seq_len: 128, d_model: 128, n_heads: 4, n_layers: 4}
    data: {source: stdlib_bytes, batch_size: 32}
    optimizer:
      name: adamw
      kwargs: {weight_decay: 0.1}
      schedule: {name: warmup_cosine_decay_schedule, kwargs: {init_value: 0.0, ...}}
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, TypeAlias

from titanax.cli._errors import ConfigError, Problem

__all__ = [
    "TP_PRESETS",
    "CNNModel",
    "CheckpointConfig",
    "Config",
    "DPConfig",
    "DataConfig",
    "FSDPConfig",
    "FlaxNNXModel",
    "GPTModel",
    "LoggingConfig",
    "MLPModel",
    "MeshConfig",
    "Mode",
    "ModelConfig",
    "OptimizerConfig",
    "PPConfig",
    "PlanConfig",
    "PrecisionConfig",
    "RunConfig",
    "ScheduleConfig",
    "TPConfig",
    "token_geometry",
]

Mode: TypeAlias = Literal["dp", "tp", "pp"]


class _Checks:
    """Collects per-field problems of one record and raises them together."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def positive(self, field: str, value: int | None, *, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if value is None or value < 1:
            self.add(field, f"must be a positive int, got {value!r}.")

    def add(self, field: str, message: str) -> None:
        self.problems.append(Problem(path=field, message=message))

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


def _identifier(checks: _Checks, field: str, value: str) -> None:
    if not value.isidentifier():
        checks.add(
            field, f"{value!r} is not a mesh axis name (use names such as 'data', 'tensor')."
        )


# -- run ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RunConfig:
    """What to run and where its files go.

    Args:
      name: the run's name (metric plots, logs).
      dir: the run directory: resolved config, metrics, TensorBoard events, checkpoints, data
        cache. Running the same config again resumes from its newest checkpoint.
      mode: ``"dp"``, ``"tp"`` or ``"pp"``; ``None`` takes the mode of the command
        (``titanax run tp``). A mode that differs from the command's is an error.
      steps: train until this step (a resumed run continues up to it).
      seed: seed of the parameters, dropout and the data order.
      cpu_devices: simulate this many CPU devices per process (the JAX CPU backend, set
        before JAX starts); ``None`` uses the devices JAX finds. ``--cpu-devices`` overrides it,
        and so does ``titanax launch``'s per-process count.
      eval_every: steps between validation runs (``None``: only at the end).
      eval_batches: validation batches per evaluation (``None``: the whole validation split).
      compilation_cache: a directory for JAX's persistent compilation cache (``None``: off);
        a resumed run then reuses the compiled steps instead of compiling them again.
    """

    name: str = "run"
    dir: str = "runs/run"
    mode: Mode | None = None
    steps: int = 100
    seed: int = 0
    cpu_devices: int | None = None
    eval_every: int | None = None
    eval_batches: int | None = 16
    compilation_cache: str | None = None

    def __post_init__(self) -> None:
        checks = _Checks()
        checks.positive("steps", self.steps)
        checks.positive("cpu_devices", self.cpu_devices, allow_none=True)
        checks.positive("eval_every", self.eval_every, allow_none=True)
        checks.positive("eval_batches", self.eval_batches, allow_none=True)
        if self.seed < 0:
            checks.add("seed", f"must be a non-negative int, got {self.seed}.")
        if not self.dir:
            checks.add("dir", "must name a directory, e.g. runs/my_run.")
        checks.raise_if_any()


# -- mesh and plan -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class MeshConfig:
    """The device mesh (``titanax.mesh.MeshSpec``).

    Args:
      axes: axis names, e.g. ``[data, tensor]``.
      shape: one size per axis; one ``-1`` is inferred from the device count.
      axis_types: ``"auto"`` (XLA propagates shardings) or ``"explicit"``.
    """

    axes: tuple[str, ...] = ("data",)
    shape: tuple[int, ...] = (-1,)
    axis_types: Literal["auto", "explicit"] = "auto"

    def __post_init__(self) -> None:
        checks = _Checks()
        if not self.axes:
            checks.add("axes", "needs at least one axis name, e.g. [data].")
        for name in self.axes:
            _identifier(checks, "axes", name)
        repeated = sorted({a for a in self.axes if self.axes.count(a) > 1})
        if repeated:
            checks.add(
                "axes", f"axis names {repeated} appear twice; every axis needs its own name."
            )
        if len(self.shape) != len(self.axes):
            checks.add(
                "shape",
                f"has {len(self.shape)} sizes for {len(self.axes)} axes {list(self.axes)}; give "
                "one size per axis.",
            )
        if any(s == 0 or s < -1 for s in self.shape):
            checks.add("shape", f"sizes must be positive or -1, got {list(self.shape)}.")
        if self.shape.count(-1) > 1:
            checks.add(
                "shape", f"{list(self.shape)} has more than one -1; at most one is inferred."
            )
        checks.raise_if_any()

    def sizes(self, num_devices: int | None) -> dict[str, int] | None:
        """Axis sizes on ``num_devices`` devices (``-1`` filled in); ``None`` if unknown."""
        known = math.prod(s for s in self.shape if s != -1)
        if -1 in self.shape:
            if num_devices is None or num_devices % known:
                return None
            return {
                a: (num_devices // known if s == -1 else s)
                for a, s in zip(self.axes, self.shape, strict=True)
            }
        return dict(zip(self.axes, self.shape, strict=True))


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DPConfig:
    """Data parallelism (``titanax.sharding.DP``): ``axis``, ``accumulate_steps``."""

    axis: str = "data"
    accumulate_steps: int = 1

    def __post_init__(self) -> None:
        checks = _Checks()
        _identifier(checks, "axis", self.axis)
        checks.positive("accumulate_steps", self.accumulate_steps)
        checks.raise_if_any()


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FSDPConfig:
    """Fully sharded data parallelism (``titanax.sharding.FSDP``)."""

    axis: str = "fsdp"
    min_size_bytes: int = 4096
    zero1: bool = False

    def __post_init__(self) -> None:
        checks = _Checks()
        _identifier(checks, "axis", self.axis)
        if self.min_size_bytes < 0:
            checks.add("min_size_bytes", f"must be >= 0, got {self.min_size_bytes}.")
        checks.raise_if_any()


TP_PRESETS = ("gpt", "flax_nnx", "hf")
"""Names of the ``plan.tp.rules`` presets: functions of ``titanax.sharding.tp_rules``."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TPConfig:
    """Tensor parallelism (``titanax.sharding.TP``).

    Args:
      axis: the tensor axis.
      rules: a preset of ``titanax.sharding.tp_rules`` — ``"gpt"`` (the project GPT's Megatron
        layout), ``"flax_nnx"`` (Flax NNX module names: ``attn/query``, ``mlp/up``, ...) or
        ``"hf"`` (Hugging Face Llama-style names) — or a mapping ``{path glob: spec}`` with
        specs as lists (``[null, tensor]``).
    """

    axis: str = "tensor"
    rules: str | dict[str, Any] = "gpt"

    def __post_init__(self) -> None:
        checks = _Checks()
        _identifier(checks, "axis", self.axis)
        if isinstance(self.rules, str) and self.rules not in TP_PRESETS:
            presets = ", ".join(repr(p) for p in TP_PRESETS)
            checks.add(
                "rules",
                f"unknown preset {self.rules!r}; use one of {presets} or a mapping {{glob: spec}}.",
            )
        checks.raise_if_any()


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PPConfig:
    """Pipeline parallelism (``titanax.sharding.PP``, executed by ``titanax.pipeline``)."""

    axis: str = "pipeline"
    stages: int = 2
    microbatches: int = 4
    schedule: Literal["gpipe", "1f1b", "interleaved"] = "1f1b"
    virtual_stages: int = 1
    # "recompute": the backward runs the stage forward again; "stash": keep its residuals
    activations: Literal["recompute", "stash"] = "recompute"

    def __post_init__(self) -> None:
        checks = _Checks()
        _identifier(checks, "axis", self.axis)
        checks.positive("stages", self.stages)
        checks.positive("microbatches", self.microbatches)
        checks.positive("virtual_stages", self.virtual_stages)
        if self.virtual_stages > 1 and self.schedule != "interleaved":
            checks.add(
                "virtual_stages",
                f"{self.virtual_stages} needs schedule: interleaved (got {self.schedule!r}).",
            )
        checks.raise_if_any()


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PlanConfig:
    """The parallel layout (``titanax.sharding.Plan``): one section per parallelism.

    Args:
      dp: data parallelism (absent or ``null``: not used).
      fsdp: fully sharded data parallelism (absent or ``null``: not used).
      tp: tensor parallelism (absent or ``null``: not used).
      pp: pipeline parallelism (absent or ``null``: not used).
      rules: extra ``{glob: spec}`` rules that win over the TP rules.
      indivisible: ``"raise"`` or ``"replicate"`` for a dim that does not divide over its axes.
    """

    dp: DPConfig | None = None
    fsdp: FSDPConfig | None = None
    tp: TPConfig | None = None
    pp: PPConfig | None = None
    rules: dict[str, Any] = dataclasses.field(default_factory=dict)
    indivisible: Literal["raise", "replicate"] = "raise"

    def roles(self) -> list[tuple[str, str]]:
        """``(section, axis)`` of every parallelism used, in plan order."""
        found: list[tuple[str, str]] = []
        for name in ("dp", "fsdp", "tp", "pp"):
            record = getattr(self, name)
            if record is not None:
                found.append((name, record.axis))
        return found

    @property
    def data_axes(self) -> tuple[str, ...]:
        """The axes the batch is split over (DP axis, then FSDP axis)."""
        axes = [r.axis for r in (self.dp, self.fsdp) if r is not None]
        return tuple(dict.fromkeys(axes))


# -- model -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class GPTModel:
    """The project GPT (``titanax.models.GPTConfig``), for token data."""

    kind: Literal["gpt"] = "gpt"
    vocab_size: int = 256
    seq_len: int = 128
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int | None = None
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        checks = _Checks()
        for name in ("vocab_size", "seq_len", "d_model", "n_heads", "n_layers"):
            checks.positive(name, getattr(self, name))
        checks.positive("d_ff", self.d_ff, allow_none=True)
        if self.n_heads > 0 and self.d_model % self.n_heads:
            checks.add(
                "n_heads", f"{self.n_heads} does not divide d_model={self.d_model} into heads."
            )
        if not 0.0 <= self.dropout < 1.0:
            checks.add("dropout", f"must be in [0, 1), got {self.dropout}.")
        if not self.init_std > 0.0:
            checks.add("init_std", f"must be > 0, got {self.init_std}.")
        checks.raise_if_any()


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class MLPModel:
    """A multi-layer perceptron (``titanax.models.MLPConfig``) for flat features.

    ``sizes`` are the hidden widths only: the input width and the class count come from the data.
    """

    kind: Literal["mlp"] = "mlp"
    hidden: tuple[int, ...] = (128,)
    activation: Literal["relu", "tanh", "gelu"] = "relu"

    def __post_init__(self) -> None:
        checks = _Checks()
        if any(h < 1 for h in self.hidden):
            checks.add("hidden", f"widths must be positive ints, got {list(self.hidden)}.")
        checks.raise_if_any()


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CNNModel:
    """A small convnet (``titanax.models.CNNConfig``) for square grayscale images."""

    kind: Literal["cnn"] = "cnn"
    channels: tuple[int, ...] = (16, 32)
    hidden: int = 64

    def __post_init__(self) -> None:
        checks = _Checks()
        if not self.channels or any(c < 1 for c in self.channels):
            checks.add("channels", f"needs positive channel counts, got {list(self.channels)}.")
        checks.positive("hidden", self.hidden)
        checks.raise_if_any()


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FlaxNNXModel:
    """A Flax NNX model of your own (a ``flax.nnx.Module`` class), trained as it is written.

    The CLI builds ``Class(**kwargs, rngs=nnx.Rngs(key))``, splits it with ``nnx.split`` into
    its graph (kept static) and its ``nnx.Param`` state (a nested dict: the parameters the plan
    lays out, paths such as ``blocks/0/attn/query/kernel``), and calls
    ``nnx.merge(graph, params)(inputs)`` in the loss. Pair it with ``plan.tp.rules: flax_nnx``
    (``titanax.sharding.tp_rules.flax_nnx``) or your own ``{glob: spec}`` rules.

    Args:
      module: the class: ``path/to/file.py:ClassName`` (relative to the config file's
        directory, or absolute) or ``package.module:ClassName`` (imported). The code is
        imported and run, like a training script.
      kwargs: keyword arguments of the constructor (besides ``rngs``).
      task: ``"lm"``: ``model(inputs [B, T] int32) -> logits [B, T, vocab]`` on token data;
        ``kwargs`` must hold ``vocab_size`` and ``seq_len`` (they size the data). ``"classify"``:
        ``model(x [B, H, W] float32) -> logits [B, classes]`` on labelled images.
    """

    kind: Literal["flax_nnx"] = "flax_nnx"
    module: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    task: Literal["lm", "classify"] = "lm"

    def __post_init__(self) -> None:
        checks = _Checks()
        where, _, name = self.module.rpartition(":")
        if not where or not name.isidentifier():
            checks.add(
                "module",
                f"{self.module!r} does not name a class; write path/to/file.py:ClassName or "
                "package.module:ClassName.",
            )
        if "rngs" in self.kwargs:
            checks.add("kwargs", "rngs is passed by the CLI (nnx.Rngs of run.seed); remove it.")
        if self.task == "lm":
            for key in ("vocab_size", "seq_len"):
                value = self.kwargs.get(key)
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    checks.add(
                        "kwargs",
                        f"task 'lm' needs kwargs.{key} (a positive int: it sizes the token "
                        f"data), got {value!r}.",
                    )
        checks.raise_if_any()


ModelConfig: TypeAlias = GPTModel | MLPModel | CNNModel | FlaxNNXModel


def token_geometry(model: ModelConfig) -> tuple[int, int] | None:
    """``(vocab_size, seq_len)`` of a model that reads token windows; ``None`` for image models."""
    if isinstance(model, GPTModel):
        return model.vocab_size, model.seq_len
    if isinstance(model, FlaxNNXModel) and model.task == "lm":
        return int(model.kwargs["vocab_size"]), int(model.kwargs["seq_len"])
    return None


# -- data, optimizer, precision, checkpoints, logging -------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DataConfig:
    """Where the samples come from and how they are batched.

    Args:
      source: ``"stdlib_bytes"`` (byte-level LM on this Python's standard library sources),
        ``"digits"`` (scikit-learn's 8×8 digits), ``"mnist_idx"`` (a directory of MNIST IDX
        files) or ``"synthetic"`` (generated; for tests).
      batch_size: global batch size (all devices and processes together).
      valid_percent: share of the samples (stdlib: of the files, by a fixed hash of their
        path) held out for validation, in percent.
      path: the MNIST IDX directory (``mnist_idx`` only).
      cache_dir: where the stdlib corpus is cached as ``.npy`` (default: ``<run dir>/data``).
      max_bytes: use only the first files (sorted) up to this many bytes (stdlib).
      num_samples: samples of the ``synthetic`` source (windows for a GPT).
    """

    source: Literal["stdlib_bytes", "digits", "mnist_idx", "synthetic"] = "stdlib_bytes"
    batch_size: int = 32
    valid_percent: float = 5.0
    path: str | None = None
    cache_dir: str | None = None
    max_bytes: int | None = None
    num_samples: int = 2048

    def __post_init__(self) -> None:
        checks = _Checks()
        checks.positive("batch_size", self.batch_size)
        checks.positive("max_bytes", self.max_bytes, allow_none=True)
        checks.positive("num_samples", self.num_samples)
        if not 0.0 < self.valid_percent < 100.0:
            checks.add("valid_percent", f"must be in (0, 100), got {self.valid_percent}.")
        if self.source == "mnist_idx" and not self.path:
            checks.add("path", "source mnist_idx needs path: the directory holding the IDX files.")
        checks.raise_if_any()


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ScheduleConfig:
    """A learning-rate schedule: ``optax.<name>(**kwargs)`` (``"_schedule"`` may be left off)."""

    name: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


DEFAULT_LEARNING_RATE = 1e-3
"""The constant rate of an ``optimizer`` section with neither ``learning_rate`` nor ``schedule``."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class OptimizerConfig:
    """Any optax optimizer by name: ``optax.<name>(learning_rate, **kwargs)``.

    Args:
      name: e.g. ``"adamw"``, ``"sgd"``, ``"lion"``.
      learning_rate: a constant rate (``None``: :data:`DEFAULT_LEARNING_RATE`). Only without
        ``schedule``: the schedule gives the rate, so setting both is an error (a rate that
        would be silently ignored).
      schedule: a schedule passed as the learning rate.
      kwargs: other keyword arguments of the optimizer (checked against the optax function's
        signature when the optimizer is built).
      clip_grad_norm: clip the global gradient norm to this value first (``None``: no clipping).
    """

    name: str = "adamw"
    learning_rate: float | None = None
    schedule: ScheduleConfig | None = None
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    clip_grad_norm: float | None = None

    def __post_init__(self) -> None:
        checks = _Checks()
        if self.learning_rate is not None and not self.learning_rate > 0:
            checks.add("learning_rate", f"must be > 0, got {self.learning_rate}.")
        if self.learning_rate is not None and self.schedule is not None:
            checks.add(
                "learning_rate",
                f"{self.learning_rate} would be ignored: optimizer.schedule "
                f"({self.schedule.name}) gives the rate. Set the schedule's rate instead "
                "(optimizer.schedule.kwargs, e.g. peak_value), or remove optimizer.schedule "
                "to train at a constant learning_rate.",
            )
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            checks.add("clip_grad_norm", f"must be > 0, got {self.clip_grad_norm}.")
        if "learning_rate" in self.kwargs:
            checks.add("kwargs", "learning_rate goes in optimizer.learning_rate or schedule.")
        checks.raise_if_any()

    @property
    def rate(self) -> float:
        """The constant learning rate (``learning_rate``, or the default when it is unset)."""
        return DEFAULT_LEARNING_RATE if self.learning_rate is None else self.learning_rate


_DTYPES = Literal["float32", "bfloat16", "float16"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PrecisionConfig:
    """Dtypes (``titanax.exec.Precision``): fp32 master weights, optional bf16/fp16 compute."""

    param_dtype: _DTYPES = "float32"
    compute_dtype: _DTYPES = "float32"
    output_dtype: _DTYPES = "float32"
    loss_scaling: Literal["dynamic", "none"] | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointConfig:
    """Checkpoints (``titanax.io.OrbaxCheckpointer``).

    Args:
      enabled: write checkpoints (and resume from them).
      every: steps between saves; the last step is always saved (``None``: only the last).
      keep: newest checkpoints to keep (``None``: all).
      async_save: write in the background.
      dir: checkpoint directory (default: ``<run dir>/checkpoints``).
    """

    enabled: bool = True
    every: int | None = None
    keep: int | None = 3
    async_save: bool = True
    dir: str | None = None

    def __post_init__(self) -> None:
        checks = _Checks()
        checks.positive("every", self.every, allow_none=True)
        checks.positive("keep", self.keep, allow_none=True)
        checks.raise_if_any()


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LoggingConfig:
    """Metric sinks and the console.

    Args:
      log_every: steps between metric fetches (one device-to-host transfer each).
      csv: write ``metrics.csv`` (training) and ``eval.csv`` (validation) in the run directory.
      tensorboard: write TensorBoard events to ``<run dir>/tensorboard``.
      jsonl: write ``metrics.jsonl``.
      stdout: print one line per log point (besides the progress bar).
      progress: show the progress bar.
    """

    log_every: int = 10
    csv: bool = True
    tensorboard: bool = True
    jsonl: bool = False
    stdout: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        checks = _Checks()
        checks.positive("log_every", self.log_every)
        checks.raise_if_any()


# -- the whole config --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    """A whole ``titanax run`` configuration (one field per YAML section)."""

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    plan: PlanConfig = dataclasses.field(default_factory=PlanConfig)
    model: ModelConfig = dataclasses.field(default_factory=GPTModel)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    precision: PrecisionConfig = dataclasses.field(default_factory=PrecisionConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain YAML/JSON values (tuples as lists); loads back equal."""
        return _plain(self)  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
