"""``titanax verify``: a config's model at a tiny size, under its plan and on one device, compared.

Before a long run on a new layout, verify runs the config's own training step (the recipe of its
mode) for a few steps twice from the same initial parameters and the same batches — once under
the config's mesh and plan, once on a single device (for ``pp``: the same model unpipelined) —
through :func:`titanax.exec.verify_layout`, and prints the per-step loss difference and the
relative gradient difference of every parameter group, PASS/FAIL against the tolerance of the
compute dtype (``titanax.exec.TOLERANCES``).

The model is shrunk first, keeping every divisibility the plan needs (``--no-shrink`` keeps
the config's sizes and data):

* heads: the tensor axis size (2 without TP), 8 dims each (``d_model = 8 · heads``); the
  vocabulary a multiple of the tensor size (32 or more); sequence length 8; ``d_ff = 4 · d_model``;
* layers: ``stages × virtual_stages`` for a pipeline (one layer per chunk), else 2;
* the batch: 16 rows, or 2 per device of the data axes, microbatch and accumulation step if
  that is more (a multiple of their product);
* the data: the ``synthetic`` source of the model's kind (Markov tokens or 8×8 images);
* dropout off (its masks depend on the layout), and FSDP's size threshold at 0 bytes (so the
  tiny parameters are still sharded).

MLP and CNN widths are kept (they are small already); a Flax NNX model's ``kwargs`` named
``vocab_size``, ``seq_len``, ``d_model``, ``n_heads``, ``n_layers`` and ``d_ff`` are shrunk
as above when present.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from titanax.cli._config import Config, FlaxNNXModel, GPTModel, Mode
from titanax.cli._errors import CLIError

__all__ = ["VERIFY_LR", "tiny_overrides", "verify"]

VERIFY_LR = 0.1
"""SGD learning rate of both runs (the applied gradients are recovered from the updates)."""

_HEAD_DIM = 8
_SEQ_LEN = 8
_MIN_VOCAB = 32
_MIN_BATCH = 16


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tiny_overrides(config: Config, sizes: Mapping[str, int], *, steps: int) -> list[str]:
    """The ``--set`` overrides that shrink ``config`` for verification (see the module doc).

    Args:
      config: the resolved config.
      sizes: the mesh's axis sizes (``-1`` resolved).
      steps: the number of batches verification needs.

    Returns:
      ``"key.path=value"`` strings, applied after the user's overrides.
    """
    plan = config.plan
    tensor = sizes.get(plan.tp.axis, 1) if plan.tp is not None else 1
    data = math.prod(sizes.get(axis, 1) for axis in plan.data_axes)
    microbatches = plan.pp.microbatches if plan.pp is not None else 1
    accumulate = plan.dp.accumulate_steps if plan.dp is not None else 1
    rows = data * microbatches * accumulate  # the batch must divide over all of them
    batch = rows * max(2, -(-_MIN_BATCH // rows))
    out = [
        "data.source=synthetic",
        f"data.batch_size={batch}",
        f"data.num_samples={2 * batch * steps}",
        "data.valid_percent=50.0",
    ]
    heads = tensor if tensor > 1 else 2
    layers = plan.pp.stages * plan.pp.virtual_stages if plan.pp is not None else 2
    d_model = heads * _HEAD_DIM
    dims = {
        "vocab_size": _round_up(_MIN_VOCAB, tensor),
        "seq_len": _SEQ_LEN,
        "d_model": d_model,
        "n_heads": heads,
        "n_layers": layers,
    }
    model = config.model
    if isinstance(model, GPTModel):
        out += [f"model.{k}={v}" for k, v in dims.items()]
        out += ["model.d_ff=null", "model.dropout=0.0"]
    elif isinstance(model, FlaxNNXModel):
        dims["d_ff"] = 4 * d_model
        out += [f"model.kwargs.{k}={v}" for k, v in dims.items() if k in model.kwargs]
    if plan.fsdp is not None:
        out.append("plan.fsdp.min_size_bytes=0")
    return out


def _group_table(report: Any) -> Any:
    """Per parameter group: the largest relative gradient difference over the steps."""
    from rich.table import Table

    table = Table(title="gradient difference per parameter group", title_justify="left")
    for column, justify in (("group", "left"), ("largest diff", "right"), ("at step", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_column("result", justify="right")
    groups = list(report.steps[0].grad_rel_diff) if report.steps else []
    for group in groups:
        diffs = [(s.grad_rel_diff[group], s.step) for s in report.steps]
        worst, step = max(diffs, key=lambda d: math.inf if math.isnan(d[0]) else d[0])
        ok = all(d <= report.grad_tolerance for d, _ in diffs)
        table.add_row(group, f"{worst:.2e}", str(step), "PASS" if ok else "FAIL")
    return table


def verify(
    path: str | os.PathLike[str],
    console: Any,
    *,
    overrides: Sequence[str] = (),
    steps: int = 3,
    command: Mode | None = None,
    cpu_devices: int | None = None,
    shrink: bool = True,
) -> Any:
    """Runs ``titanax verify`` on a config and prints the comparison.

    Args:
      path: the YAML config.
      console: a ``rich.console.Console``.
      overrides: the user's ``--set`` overrides (applied before the shrinking ones).
      steps: training steps to compare (at least 1).
      command: the mode to verify (default: ``run.mode`` or the one the plan implies).
      cpu_devices: as ``titanax run --cpu-devices``.
      shrink: shrink the model and data (see the module doc); ``False`` keeps the config's.

    Returns:
      The :class:`titanax.exec.VerifyReport` (``.passed``).

    Raises:
      ConfigError: the config (at full size, or shrunk) has problems.
      CLIError: ``steps`` below 1, or a multi-process run.
    """
    from titanax.cli._session import prepare

    if steps < 1:
        raise CLIError(f"titanax verify: --steps {steps} must be at least 1.")
    full = prepare(path, overrides=overrides, command=command, cpu_devices=cpu_devices)
    import jax

    if jax.process_count() > 1:
        raise CLIError(
            "titanax verify compares against one device in one process; run it without "
            "titanax launch (simulated CPU devices show the same layout)."
        )
    extra = tiny_overrides(full.config, dict(full.mesh.shape), steps=steps) if shrink else []
    session = (
        prepare(
            path,
            overrides=[*overrides, *extra],
            command=command or full.mode,
            cpu_devices=cpu_devices,
        )
        if extra
        else full
    )
    return _compare(session, console, steps=steps, shrunk=extra)


def _compare(session: Any, console: Any, *, steps: int, shrunk: Sequence[str]) -> Any:
    import jax

    from titanax.cli._data import load_splits
    from titanax.cli._recipes import make_recipe
    from titanax.exec import verify_layout
    from titanax.io import ShardedLoader

    config = session.config
    sizes = " × ".join(f"{a}={s}" for a, s in session.mesh.shape.items())
    console.print(
        f"[bold]titanax verify[/bold] {session.loaded.source}: mode {session.mode}, mesh {sizes} "
        f"on {session.devices}"
    )
    if shrunk:
        shown = [o for o in shrunk if o.startswith(("model.", "plan."))]
        console.print(
            "tiny size (--no-shrink keeps the config's): " + ", ".join(shown or ["model as is"]),
            markup=False,
        )
    console.print(session.model.summary, markup=False)
    splits = load_splits(config.data, config.model, run_dir=pathlib.Path(config.run.dir))
    batch_size = config.data.batch_size
    loader = ShardedLoader(splits.train, global_batch_size=batch_size, seed=config.run.seed)
    batches = list(itertools.islice(loader, steps))
    if len(batches) < steps:
        raise CLIError(
            f"titanax verify: the training split gives {len(batches)} batches of "
            f"{batch_size}, fewer than --steps {steps}."
        )
    console.print(
        f"{steps} step(s) of SGD (lr {VERIFY_LR}) on {batch_size}-sample batches, from the same "
        "initial parameters and batches, under the plan and on 1 device"
        + (" (the unpipelined model)" if session.mode == "pp" else "")
    )
    recipe = make_recipe(session.mode, session.model, plan=session.plan, mesh=session.mesh)
    reference_plan = None
    if recipe.reference_step is not None:  # pp: the unpipelined step, without the PP record
        reference_plan = dataclasses.replace(session.plan, pipeline_parallel=None)
    rngs = {name: jax.random.key(config.run.seed + 1 + i) for i, name in enumerate(recipe.rngs)}
    report = verify_layout(
        recipe.train_step,
        recipe.init,
        batches,
        mesh=session.mesh,
        plan=session.plan,
        reference_step=recipe.reference_step,
        reference_plan=reference_plan,
        precision=session.precision,
        rngs=rngs or None,
        lr=VERIFY_LR,
    )
    text = report.describe()
    head, _, verdict = text.rstrip("\n").rpartition("\n")
    console.print(head, markup=False, highlight=False)
    console.print(_group_table(report))
    style = "bold green" if report.passed else "bold red"
    console.print(verdict, style=style, markup=False, highlight=False)
    return report
