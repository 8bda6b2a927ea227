"""The four parallelisms a ``Plan`` composes: ``DP``, ``FSDP``, ``TP`` and ``PP``.

Each is a frozen record naming its mesh axis and options, validated on construction; what needs
the mesh (axis sizes, divisibility) is checked by ``Plan.validate``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, TypeAlias

from titanax.sharding._errors import ShardingError
from titanax.sharding._rules import Rules

__all__ = ["DP", "FSDP", "PP", "TP", "Schedule"]

Schedule: TypeAlias = Literal["gpipe", "1f1b", "interleaved"]
_SCHEDULES: tuple[Schedule, ...] = ("gpipe", "1f1b", "interleaved")
Activations: TypeAlias = Literal["recompute", "stash"]
_ACTIVATIONS: tuple[Activations, ...] = ("recompute", "stash")


def _check_axis(record: str, axis: Any) -> None:
    if not isinstance(axis, str) or not axis.isidentifier():
        raise ShardingError(
            f"{record}: axis={axis!r} must be a mesh axis name (a Python identifier such as "
            "'data', 'fsdp', 'tensor' or 'pipeline')."
        )


def _check_int(record: str, name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ShardingError(f"{record}: {name}={value!r} must be an int >= {minimum}.")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DP:
    """Data parallelism: parameters replicated over ``axis``, the batch split over it.

    Gradients are averaged over the axis by the step (``collectives.pmean`` in the per-device
    view; the partitioner in the global view).

    Args:
      axis: the mesh axis; default ``"data"``.
      accumulate_steps: micro-steps whose gradients are summed before one optimizer update
        (executed by ``titanax.exec``); ``>= 1``.

    Raises:
      ShardingError: a bad axis name or ``accumulate_steps < 1``.
    """

    axis: str = dataclasses.field(default="data", kw_only=False)
    accumulate_steps: int = 1

    def __post_init__(self) -> None:
        _check_axis("DP", self.axis)
        _check_int("DP", "accumulate_steps", self.accumulate_steps, minimum=1)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FSDP:
    """Fully sharded data parallelism (ZeRO-3), or ZeRO-1 with ``zero1=True``.

    Every parameter of at least ``min_size_bytes`` (and its optimizer state) is sharded over
    ``axis`` along its largest dim that divides by the axis size and is still free after the
    pipeline and tensor-parallel rules (ties: the lowest dim); a parameter whose spec already uses
    ``axis`` is left as its rule says. The batch is split over ``axis`` too (after the DP axis).

    Args:
      axis: the mesh axis; default ``"fsdp"``.
      min_size_bytes: parameters smaller than this (global bytes) stay replicated; ``>= 0``.
      zero1: shard only the optimizer state (``Plan.optimizer_specs``), keep parameters
        replicated over ``axis`` (``Plan.param_specs``).

    Raises:
      ShardingError: a bad axis name, a negative ``min_size_bytes`` or a non-bool ``zero1``.

    References:
      Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
      Models", 2020; Zhao et al., "PyTorch FSDP", 2023.
    """

    axis: str = dataclasses.field(default="fsdp", kw_only=False)
    min_size_bytes: int = 4096
    zero1: bool = False

    def __post_init__(self) -> None:
        _check_axis("FSDP", self.axis)
        _check_int("FSDP", "min_size_bytes", self.min_size_bytes, minimum=0)
        if not isinstance(self.zero1, bool):
            raise ShardingError(f"FSDP: zero1={self.zero1!r} must be True or False.")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TP:
    """Tensor (Megatron) parallelism over ``axis``, laid out by path-glob ``rules``.

    Args:
      axis: the mesh axis; default ``"tensor"``.
      rules: the layout rules, e.g. ``tp_rules.gpt()``; a mapping or pairs are converted to
        :class:`Rules`. Required.

    Raises:
      ShardingError: a bad axis name or rules that are not rules.

    References:
      Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models Using
      Model Parallelism", 2019.
    """

    axis: str = dataclasses.field(default="tensor", kw_only=False)
    rules: Rules

    def __post_init__(self) -> None:
        _check_axis("TP", self.axis)
        if not isinstance(self.rules, Rules):
            if not isinstance(self.rules, Mapping | list | tuple):
                raise ShardingError(
                    f"TP: rules={self.rules!r} must be Rules (e.g. tp_rules.gpt()), a mapping "
                    "{glob: spec}, or (glob, spec) pairs."
                )
            object.__setattr__(self, "rules", Rules(self.rules))


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PP:
    """Pipeline parallelism over ``axis``: the data and checks (``titanax.pipeline`` executes it).

    Parameters matching a ``stacked`` glob carry a leading ``[n_layers]`` dim, which is sharded
    over ``axis`` (each stage holds its contiguous block of layers).

    Args:
      axis: the mesh axis; default ``"pipeline"``.
      stages: pipeline stages; must equal the size of ``axis`` (checked by ``Plan.validate``).
      microbatches: microbatches per step; ``>= stages`` for ``"1f1b"`` and ``"interleaved"``
        (checked by ``Plan.validate``).
      schedule: ``"gpipe"``, ``"1f1b"`` (default) or ``"interleaved"``.
      virtual_stages: model chunks per stage; ``> 1`` only with ``schedule="interleaved"``.
      stacked: globs naming the stacked-layer parameters (default ``("blocks/*",)``).
      activations: what a stage keeps between a microbatch's forward and its backward:
        ``"recompute"`` (default; the stage input only, the backward runs the stage forward
        again) or ``"stash"`` (the forward's residuals; no recomputation, memory grows with the
        microbatches in flight: ``m`` for GPipe, at most ``p`` for 1F1B). Passed to
        ``titanax.pipeline.make_pipeline``.

    Raises:
      ShardingError: a bad axis, counts below 1, an unknown schedule or ``activations``,
        ``virtual_stages > 1``
        without ``"interleaved"``, ``"interleaved"`` with ``virtual_stages < 2`` or
        ``microbatches`` not divisible by ``stages``, or empty/non-string ``stacked`` globs.

    References:
      Huang et al., "GPipe", 2019; Narayanan et al., "Efficient Large-Scale Language Model
      Training on GPU Clusters Using Megatron-LM" (1F1B, interleaved), 2021.
    """

    axis: str = dataclasses.field(default="pipeline", kw_only=False)
    stages: int
    microbatches: int
    schedule: Schedule = "1f1b"
    virtual_stages: int = 1
    stacked: tuple[str, ...] = ("blocks/*",)
    activations: Activations = "recompute"

    def __post_init__(self) -> None:
        _check_axis("PP", self.axis)
        _check_int("PP", "stages", self.stages, minimum=1)
        _check_int("PP", "microbatches", self.microbatches, minimum=1)
        _check_int("PP", "virtual_stages", self.virtual_stages, minimum=1)
        if self.schedule not in _SCHEDULES:
            raise ShardingError(f"PP: schedule={self.schedule!r} is not one of {list(_SCHEDULES)}.")
        if self.activations not in _ACTIVATIONS:
            raise ShardingError(
                f"PP: activations={self.activations!r} is not one of {list(_ACTIVATIONS)}: "
                "'recompute' keeps each stage input and runs the stage forward again in the "
                "backward; 'stash' keeps the forward's residuals."
            )
        if self.virtual_stages > 1 and self.schedule != "interleaved":
            raise ShardingError(
                f"PP: virtual_stages={self.virtual_stages} needs schedule='interleaved' (got "
                f"{self.schedule!r}). Use schedule='interleaved' or virtual_stages=1."
            )
        if self.schedule == "interleaved" and self.virtual_stages < 2:
            raise ShardingError(
                f"PP: schedule='interleaved' needs virtual_stages >= 2 (got "
                f"{self.virtual_stages}); with one chunk per stage use schedule='1f1b'."
            )
        if self.schedule == "interleaved" and self.microbatches % self.stages:
            raise ShardingError(
                f"PP: schedule='interleaved' needs microbatches divisible by stages (Megatron's "
                f"order); got microbatches={self.microbatches}, stages={self.stages}. Use a "
                f"multiple of {self.stages}."
            )
        stacked = (self.stacked,) if isinstance(self.stacked, str) else tuple(self.stacked)
        if not all(isinstance(g, str) and g for g in stacked):
            raise ShardingError(
                f"PP: stacked={self.stacked!r} must be path globs such as ('blocks/*',)."
            )
        object.__setattr__(self, "stacked", stacked)
