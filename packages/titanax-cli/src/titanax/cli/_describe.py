"""``titanax describe``: the mesh, the per-parameter layout and a dry run, without training.

The dry run compiles the mode's training step for abstract state and batch shapes (nothing is
allocated or trained) and reads the executable: memory per device (arguments, outputs,
temporaries, code), FLOPs, and every collective with its bytes, grouped per mesh axis.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from titanax.cli._recipes import make_recipe
from titanax.cli._session import Session

__all__ = ["describe", "pipeline_line", "state_bytes_per_device"]


_UNMAPPED = "(unmapped)"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.2f} MiB"


def state_bytes_per_device(abstract: Any) -> dict[str, int]:
    """Bytes per device of each top-level field of an abstract ``TrainState`` (its shardings)."""
    out: dict[str, int] = {}
    for name in ("params", "opt_state"):
        total = 0
        for leaf in jax.tree.leaves(getattr(abstract, name)):
            shape = (
                leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
            )
            total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
        out[name] = total
    return out


def pipeline_line(plan: Any) -> str | None:
    """One line with the pipeline settings of ``plan`` (a ``titanax.sharding.Plan``) and the
    schedule's bubble fraction; ``None`` when the plan has no ``PP``.

    Raises:
      PipelineError: the PP settings do not form a valid schedule.
    """
    from titanax.pipeline import Schedule

    pp = plan.pipeline_parallel
    if pp is None:
        return None
    bubble = Schedule.from_pp(pp).bubble_fraction
    return (
        f"pipeline: schedule {pp.schedule}, {pp.stages} stages over axis {pp.axis!r}, "
        f"{pp.microbatches} microbatches, {pp.virtual_stages} virtual stage(s) per device, "
        f"activations {pp.activations}; bubble fraction {bubble:.1%}"
    )


def describe(session: Session, console: Any) -> None:
    """Prints the mesh, the plan's layout table and the dry run of the training step.

    Args:
      session: from :func:`titanax.cli._session.prepare`.
      console: a ``rich.console.Console``.
    """
    from rich.table import Table

    from titanax.exec import Engine

    config = session.config
    console.print(
        f"[bold]titanax describe[/bold] {session.loaded.source}: mode {session.mode}, "
        f"{session.devices}"
    )
    console.print(session.mesh_spec.describe(session.mesh), end="")
    console.print(session.model.summary)
    line = pipeline_line(session.plan)
    if line is not None:
        console.print(line, markup=False)
    recipe = make_recipe(
        session.mode, session.model, plan=session.plan, mesh=session.mesh, schedule=session.schedule
    )
    engine = Engine(
        session.mesh, session.plan, optimizer=session.optimizer, precision=session.precision
    )
    rngs = {name: jax.random.key(1 + i) for i, name in enumerate(recipe.rngs)}
    abstract = engine.abstract_state(recipe.init, jax.random.key(0), rngs=rngs)
    console.print(session.plan.layout(abstract.params, session.mesh).render(), end="")
    per_device = state_bytes_per_device(abstract)
    console.print(
        f"training state per device: parameters {_mib(per_device['params'])}, optimizer state "
        f"{_mib(per_device['opt_state'])} ({config.optimizer.name})"
    )
    report = engine.compile(recipe.train_step, session.model.batch, state=abstract)
    batch = config.data.batch_size
    console.print(
        f"[bold]dry run[/bold] of one training step (global batch {batch}, mode {session.mode}): "
        f"compiled in {report.compile_seconds:.1f} s"
    )
    memory = Table(title="memory per device", title_justify="left")
    for column in ("arguments", "outputs", "temporaries", "generated code", "aliased (donated)"):
        memory.add_column(column, justify="right")
    memory.add_row(
        _mib(report.argument_bytes),
        _mib(report.output_bytes),
        _mib(report.temp_bytes),
        _mib(report.generated_code_bytes),
        _mib(report.alias_bytes),
    )
    console.print(memory)
    flops = "n/a" if report.flops is None else f"{report.flops:.3e}"
    console.print(f"FLOPs per device per step: {flops}")
    comm = Table(title="communication per step, per mesh axis", title_justify="left")
    for column, justify in (("mesh axis", "left"), ("size", "right"), ("collectives", "left")):
        comm.add_column(column, justify=justify)  # type: ignore[arg-type]
    comm.add_column("result bytes per device", justify="right")
    sizes = dict(session.mesh.shape)
    # collectives over one device (no communication) are left out
    collectives = [c for c in report.collectives if c.axes or c.group_size > 1]
    per_axis: dict[str, int] = {}
    table: dict[tuple[str, tuple[str, ...]], tuple[int, int]] = {}
    for c in collectives:
        for axis in c.axes or (_UNMAPPED,):
            per_axis[axis] = per_axis.get(axis, 0) + c.bytes
        count, nbytes = table.get((c.kind, c.axes), (0, 0))
        table[(c.kind, c.axes)] = (count + 1, nbytes + c.bytes)
    for axis in [*sizes, *(a for a in per_axis if a not in sizes)]:
        kinds: dict[str, int] = {}
        for c in collectives:
            if axis in (c.axes or (_UNMAPPED,)):
                kinds[c.kind] = kinds.get(c.kind, 0) + 1
        text = ", ".join(f"{n}× {k}" for k, n in sorted(kinds.items())) or "none"
        comm.add_row(axis, str(sizes.get(axis, "")), text, _mib(per_axis.get(axis, 0)))
    console.print(comm)
    for (kind, axes), (count, nbytes) in sorted(table.items()):
        over = " × ".join(axes) or f"{_UNMAPPED} (replica groups not mapped to mesh axes)"
        console.print(f"  {kind} over {over}: {count} op(s), {_mib(nbytes)}")
