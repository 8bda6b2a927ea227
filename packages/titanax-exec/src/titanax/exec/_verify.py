"""``verify_layout``: run a step under a layout and on one device, and compare, step by step.

Before spending a cluster on a new layout, run it at a tiny size: the same initial parameters and
the same batches go through the step under the plan and through a reference step on a single
device; per step the loss difference and, per parameter group, the relative difference of the
gradients are printed with PASS/FAIL against a tolerance that depends on the compute dtype.

The gradients are those the *step* applied — including every reduction the step wrote (or
forgot) — recovered from the parameter update of plain SGD: ``g_t = (p_t - p_{t+1}) / lr``
(the optimizer is replaced by ``optax.sgd(lr)`` for verification, nothing else changes).
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from titanax.exec._errors import ExecError
from titanax.exec._precision import Precision
from titanax.exec._step import StepFunction
from titanax.mesh import MeshSpec
from titanax.sharding import Plan, path_str

__all__ = ["TOLERANCES", "StepComparison", "VerifyReport", "verify_layout"]

TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-4, 1e-3),
    "bfloat16": (2e-2, 5e-2),
    "float16": (1e-2, 5e-2),
}
"""Compute dtype -> (loss relative tolerance, gradient relative tolerance). fp32 allows for the
changed order of floating-point reductions over a few steps; bf16/fp16 for their 8/11-bit
mantissas. The gradient difference of a group is ``‖g - g_ref‖ / ‖g_ref‖`` over its elements."""


@dataclasses.dataclass(frozen=True)
class StepComparison:
    """One step of a verification run.

    Attributes:
      step: 1-based step number.
      loss: the layout's loss; ``reference_loss``: the 1-device loss.
      loss_rel_diff: ``|loss - reference_loss| / max(|reference_loss|, 1e-12)``.
      grad_rel_diff: parameter group -> ``‖g - g_ref‖ / ‖g_ref‖``.
    """

    step: int
    loss: float
    reference_loss: float
    loss_rel_diff: float
    grad_rel_diff: dict[str, float]

    @property
    def worst_group(self) -> tuple[str, float]:
        """The parameter group with the largest gradient difference."""
        return max(self.grad_rel_diff.items(), key=lambda kv: kv[1])


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_layout`.

    Attributes:
      steps: one :class:`StepComparison` per step.
      loss_tolerance, grad_tolerance: the thresholds applied (from :data:`TOLERANCES`).
      compute_dtype: the precision policy's compute dtype.
      layout: a description of the layout under test.
    """

    steps: tuple[StepComparison, ...]
    loss_tolerance: float
    grad_tolerance: float
    compute_dtype: str
    layout: str

    @property
    def passed(self) -> bool:
        """Every step's loss and every group's gradients within tolerance (NaN fails)."""
        return all(
            s.loss_rel_diff <= self.loss_tolerance
            and all(d <= self.grad_tolerance for d in s.grad_rel_diff.values())
            for s in self.steps
        )

    def describe(self) -> str:
        """A per-step table with PASS/FAIL and, on failure, the groups over tolerance."""
        from rich.console import Console
        from rich.table import Table

        table = Table()
        for column in ("step", "loss", "1-device loss", "loss diff", "worst gradient group",
                       "grad diff", "result"):  # fmt: skip
            table.add_column(column, justify="left" if "group" in column else "right")
        for s in self.steps:
            group, diff = s.worst_group
            ok = s.loss_rel_diff <= self.loss_tolerance and diff <= self.grad_tolerance
            table.add_row(
                str(s.step), f"{s.loss:.6f}", f"{s.reference_loss:.6f}",
                f"{s.loss_rel_diff:.2e}", group, f"{diff:.2e}", "PASS" if ok else "FAIL",
            )  # fmt: skip
        buffer = io.StringIO()
        console = Console(file=buffer, width=140, color_system=None, soft_wrap=True)
        console.print(f"verify {self.layout} against 1 device, compute {self.compute_dtype}")
        console.print(
            f"tolerance loss {self.loss_tolerance:g}, gradients {self.grad_tolerance:g} "
            "(relative; gradient difference per group = ‖g - g_ref‖ / ‖g_ref‖)"
        )
        console.print(table)
        bad = sorted(
            {
                g
                for s in self.steps
                for g, d in s.grad_rel_diff.items()
                if not d <= self.grad_tolerance
            }
        )
        console.print(
            "PASS: the layout matches one device."
            if self.passed
            else "FAIL: "
            + (f"gradients differ in {bad}; " if bad else "")
            + "check the step's reductions (a per-device step must reduce its gradients over "
            "the data axes) and the plan's rules."
        )
        return buffer.getvalue()


def _groups(params: Any, depth: int) -> dict[str, list[np.ndarray]]:
    groups: dict[str, list[np.ndarray]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(path_str(path).split("/")[:depth]) or "<root>"
        groups.setdefault(name, []).append(np.asarray(leaf, np.float64))
    return groups


def _rel(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    num = math.sqrt(sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b, strict=True)))
    den = math.sqrt(sum(float(np.sum(y**2)) for y in b))
    if not math.isfinite(num):
        return math.inf
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def _recovered(lr: float) -> Callable[[Any, Any], np.ndarray]:
    def grad(before: Any, after: Any) -> np.ndarray:
        return (np.asarray(before, np.float64) - np.asarray(after, np.float64)) / lr

    return grad


def _trajectory(
    engine: Any, step: StepFunction, init_fn: Any, batches: Sequence[Any], rngs: Any
) -> tuple[list[float], list[Any]]:
    state = engine.create_state(init_fn, jax.random.key(0), rngs=rngs)
    params = [jax.device_get(state.params)]
    losses = []
    for batch in batches:
        state, metrics = engine.step(step, state, batch)
        if "loss" not in metrics:
            raise ExecError(f"verify_layout: step {step.name!r} returns no 'loss' metric.")
        losses.append(float(metrics["loss"]))  # awaits the step
        params.append(jax.device_get(state.params))
    return losses, params


def verify_layout(
    step: StepFunction,
    init_fn: Callable[[jax.Array], Any],
    batches: Sequence[Any],
    *,
    mesh: MeshSpec | jax.sharding.Mesh,
    plan: Plan,
    reference_step: StepFunction | None = None,
    reference_plan: Plan | None = None,
    precision: Precision | None = None,
    rngs: Mapping[str, jax.Array] | None = None,
    lr: float = 0.1,
    group_depth: int = 2,
    engine_factory: Callable[..., Any] | None = None,
) -> VerifyReport:
    """Runs ``step`` under ``mesh``/``plan`` and ``reference_step`` on one device; compares.

    Args:
      step: the training step under test.
      init_fn: ``init_fn(rng) -> params`` (both runs start from ``jax.random.key(0)``).
      batches: one host batch per step (global batches; a few small ones suffice).
      mesh: the mesh of the layout under test.
      plan: the plan of the layout under test.
      reference_step: the 1-device step (default ``step``; pass the unpipelined step when
        ``step`` is a pipeline step).
      reference_plan: the 1-device plan (default ``plan`` on a mesh with the same axis names,
        all of size 1 — valid for DP/FSDP/TP plans; pass e.g. ``Plan()`` for pipelines).
      precision: dtype policy of both runs; picks the tolerances from :data:`TOLERANCES`.
      rngs: PRNG streams of both runs.
      lr: SGD learning rate used to recover the applied gradients.
      group_depth: path components that name a parameter group (``blocks/0`` at depth 2).
      engine_factory: builds the engines (default :class:`titanax.exec.Engine`); called as
        ``engine_factory(mesh, plan, optimizer=..., precision=...)``.

    Returns:
      :class:`VerifyReport` (``.passed``, ``.describe()``).

    Raises:
      ExecError: no batches, or a step without a ``loss`` metric.
    """
    from titanax.exec._engine import Engine

    if not batches:
        raise ExecError("verify_layout: give at least one batch.")
    precision = precision or Precision()
    factory = engine_factory or Engine
    built = mesh.build() if isinstance(mesh, MeshSpec) else mesh
    one = MeshSpec(axes=tuple(built.axis_names), shape=(1,) * len(built.axis_names), devices=1)
    tx = optax.sgd(lr)
    engine = factory(built, plan, optimizer=tx, precision=precision)
    reference = factory(one, reference_plan or plan, optimizer=tx, precision=precision)
    losses, params = _trajectory(engine, step, init_fn, batches, rngs)
    ref_losses, ref_params = _trajectory(reference, reference_step or step, init_fn, batches, rngs)
    comparisons = []
    for t, (loss, ref_loss) in enumerate(zip(losses, ref_losses, strict=True)):
        grads = jax.tree.map(_recovered(lr), params[t], params[t + 1])
        ref_grads = jax.tree.map(_recovered(lr), ref_params[t], ref_params[t + 1])
        got, want = _groups(grads, group_depth), _groups(ref_grads, group_depth)
        diffs = {g: _rel(got[g], want[g]) for g in want}
        loss_diff = abs(loss - ref_loss) / max(abs(ref_loss), 1e-12)
        comparisons.append(
            StepComparison(
                step=t + 1,
                loss=loss,
                reference_loss=ref_loss,
                loss_rel_diff=loss_diff if math.isfinite(loss_diff) else math.inf,
                grad_rel_diff=diffs,
            )
        )
    loss_tol, grad_tol = TOLERANCES[precision.compute_dtype]
    layout = " × ".join(f"{a}={s}" for a, s in built.shape.items())
    return VerifyReport(
        steps=tuple(comparisons),
        loss_tolerance=loss_tol,
        grad_tolerance=grad_tol,
        compute_dtype=precision.compute_dtype,
        layout=f"{layout} ({step.view} view)",
    )
