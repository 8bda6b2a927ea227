"""``titanax run``: data, engine, resume, training, validation — the run directory's life.

A run directory holds the resolved config (``config.yaml``), the metric files (``metrics.csv``,
``eval.csv``, ``tensorboard/``), the checkpoints (``checkpoints/<step>/``, each with the resolved
config and the data position in its metadata), the stdlib corpus cache (``data/``) and a
``summary.json`` of the last invocation. Running the same command again resumes from the newest
checkpoint and continues at the same sample.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

from titanax.cli._data import Splits, load_splits
from titanax.cli._describe import pipeline_line
from titanax.cli._errors import CLIError
from titanax.cli._load import save_config
from titanax.cli._recipes import Recipe, make_recipe
from titanax.cli._session import Session
from titanax.cli._sinks import make_sinks
from titanax.exec import TrainingInterrupted

__all__ = ["RunInterrupted", "RunResult", "train"]


class RunInterrupted(TrainingInterrupted):
    """``Engine.fit`` stopped on SIGINT/SIGTERM; says where (and whether) the CLI's run saved.

    Attributes:
      signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
      step: the step training stopped at.
      checkpoint_directory: where the checkpoint of ``step`` was saved; ``None`` when the run
        has ``checkpoint.enabled: false`` (nothing was saved).
    """

    def __init__(self, signal_name: str, step: int, *, checkpoint_directory: str | None) -> None:
        super().__init__(signal_name, step)
        self.checkpoint_directory = checkpoint_directory


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunResult:
    """What one ``titanax run`` did.

    Attributes:
      run_dir: the run directory.
      start_step: the state's step before training (the checkpoint's, when resumed).
      final_step: the state's step after training.
      resumed_from: the checkpoint step training resumed from (``None``: a fresh start).
      eval_metrics: the final validation metrics (``loss``, ``accuracy``, ...).
      stats: numbers about the data (``unigram_entropy`` for text).
      wall_seconds: the command's wall time from config to final evaluation.
    """

    run_dir: pathlib.Path
    start_step: int
    final_step: int
    resumed_from: int | None
    eval_metrics: dict[str, float]
    stats: dict[str, float]
    wall_seconds: float


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def _config_changes(saved: Any, current: Mapping[str, Any]) -> list[str]:
    if not isinstance(saved, Mapping):
        return []
    old, new = _flat(saved), _flat(current)
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]


def _eval_batches(splits: Splits, session: Session) -> Any:
    from titanax.io import ShardedLoader

    config = session.config
    batch = config.data.batch_size

    def batches() -> Iterator[Any]:
        loader = ShardedLoader(
            splits.valid, global_batch_size=batch, seed=config.run.seed + 1, num_epochs=1
        )
        return itertools.islice(loader, config.run.eval_batches)

    return batches


def _make_directory(path: pathlib.Path, field: str) -> None:
    """Creates ``path`` (and its parents), or raises :class:`CLIError` naming it and the fix."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".titanax-write-test.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        if path.exists() and not path.is_dir():
            reason = "it is an existing file, not a directory"
        raise CLIError(
            f"titanax run: cannot use {str(path)!r} ({field}) as a directory: {reason}. Choose "
            f"another path (--set {field}=...) or fix the file system permissions."
        ) from err


def train(session: Session, console: Any) -> RunResult:
    """Runs (or resumes) the training of ``session`` and evaluates it on the validation split.

    Args:
      session: from :func:`titanax.cli._session.prepare`.
      console: a ``rich.console.Console`` for the progress and summary lines.

    Returns:
      The :class:`RunResult` (also written to ``<run dir>/summary.json``).

    Raises:
      CLIError: the validation split is smaller than one batch; the run directory (or
        ``checkpoint.dir``) cannot be created or written.
      NonFiniteError, CheckpointError, ...: from the Engine and the checkpointer.
    """
    from titanax.exec import Engine
    from titanax.io import OrbaxCheckpointer, ShardedLoader

    start_time = time.perf_counter()
    config = session.config
    run_dir = pathlib.Path(config.run.dir).expanduser()
    main = jax.process_index() == 0
    if not main:  # one voice per run: process 0 reports, the others train quietly
        from rich.console import Console

        console = Console(quiet=True)
    sizes = " × ".join(f"{a}={s}" for a, s in session.mesh.shape.items())
    console.print(
        f"[bold]titanax run {session.mode}[/bold] {session.loaded.source} -> {run_dir}\n"
        f"devices: {session.devices}; mesh {sizes}\n{session.model.summary}"
    )
    pipeline = pipeline_line(session.plan)
    if pipeline is not None:
        console.print(pipeline, markup=False)
    _make_directory(run_dir, "run.dir")
    if config.checkpoint.enabled and config.checkpoint.dir:
        _make_directory(pathlib.Path(config.checkpoint.dir).expanduser(), "checkpoint.dir")
    splits = load_splits(config.data, config.model, run_dir=run_dir)
    for line in splits.summary:
        console.print(line)
    batch = config.data.batch_size
    if Splits.samples(splits.valid) < batch:
        raise CLIError(
            f"the validation split has {Splits.samples(splits.valid)} samples, fewer than one "
            "batch of "
            f"data.batch_size={batch}; raise data.valid_percent or lower the batch size."
        )
    loader = ShardedLoader(splits.train, global_batch_size=batch, seed=config.run.seed)
    resolved = config.to_dict()
    if main:
        save_config(config, run_dir / "config.yaml")
    checkpoint = None
    if config.checkpoint.enabled:
        checkpoint = OrbaxCheckpointer(
            pathlib.Path(config.checkpoint.dir).expanduser()
            if config.checkpoint.dir
            else run_dir / "checkpoints",
            keep=config.checkpoint.keep,
            async_save=config.checkpoint.async_save,
        )
    latest = checkpoint.latest_step() if checkpoint is not None else None
    # rows a killed run logged after its last checkpoint (or, without one, after step 0) are
    # dropped: training repeats those steps and writes them again
    sinks, paths = make_sinks(
        config.logging, run_dir, resume_from_step=latest if latest is not None else 0
    )
    engine = Engine(
        session.mesh,
        session.plan,
        optimizer=session.optimizer,
        precision=session.precision,
        checkpoint=checkpoint,
        sinks=[sinks],
        metadata={"config": resolved},
    )
    recipe: Recipe = make_recipe(
        session.mode, session.model, plan=session.plan, mesh=session.mesh, schedule=session.schedule
    )
    if checkpoint is not None and latest is not None:
        meta = checkpoint.metadata(latest)
        console.print(
            f"[bold green]Resuming[/bold green] from checkpoint step {latest} in "
            f"{checkpoint.directory} (data position {meta.get('data_position')})"
        )
        changes = _config_changes(meta.get("config"), resolved)
        if changes:
            console.print("config changed since that checkpoint: " + "; ".join(changes))
    elif checkpoint is not None:
        console.print(f"no checkpoint in {checkpoint.directory}: starting from step 0")
    seed = config.run.seed
    rngs = {name: jax.random.key(seed + 1 + i) for i, name in enumerate(recipe.rngs)}
    state = engine.restore_or_create(recipe.init, jax.random.key(seed), rngs=rngs, data=loader)
    start_step = int(jax.device_get(state.step))
    eval_data = _eval_batches(splits, session)
    every = config.run.eval_every
    if start_step >= config.run.steps:
        console.print(f"already at step {start_step} >= run.steps={config.run.steps}: evaluating")
    if paths:
        console.print("metrics: " + ", ".join(paths))
    try:
        try:
            state = engine.fit(
                recipe.train_step,
                loader,
                steps=config.run.steps,
                log_every=config.logging.log_every,
                eval_step=recipe.eval_step if every else None,
                eval_data=eval_data if every else None,
                eval_every=every,
                checkpoint_every=config.checkpoint.every,
                flops_per_token=session.model.flops_per_token,
                progress=config.logging.progress,
            )
        except TrainingInterrupted as err:  # fit saved (with a checkpointer) and stopped
            directory = str(checkpoint.directory) if checkpoint is not None else None
            raise RunInterrupted(err.signal_name, err.step, checkpoint_directory=directory) from err
        final_step = int(jax.device_get(state.step))
        if sinks.last_eval is not None and sinks.last_eval[0] == final_step:
            scores = {k.removeprefix("eval_"): v for k, v in sinks.last_eval[1].items()}
        else:
            scores = engine.evaluate(recipe.eval_step, eval_data(), state=state)
            if final_step > start_step:  # a run that only re-evaluates adds no rows
                sinks.write(final_step, {f"eval_{k}": v for k, v in scores.items()})
    finally:
        sinks.close()
        if checkpoint is not None:
            checkpoint.close()
    wall = time.perf_counter() - start_time
    result = RunResult(
        run_dir=run_dir,
        start_step=start_step,
        final_step=final_step,
        resumed_from=latest,
        eval_metrics={k: float(v) for k, v in scores.items() if k not in ("loss_sum", "count")},
        stats=dict(splits.stats),
        wall_seconds=wall,
    )
    _report(result, console, unit="nats/byte" if config.data.source == "stdlib_bytes" else "nats")
    if main:
        summary = dataclasses.asdict(result)
        summary["run_dir"] = str(run_dir)
        summary["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        tmp = run_dir / f".summary.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(summary, indent=1))
        os.replace(tmp, run_dir / "summary.json")
    return result


def _report(result: RunResult, console: Any, *, unit: str) -> None:
    loss = result.eval_metrics.get("loss", float("nan"))
    line = f"validation loss {loss:.4f} {unit} at step {result.final_step}"
    entropy = result.stats.get("unigram_entropy")
    if entropy is not None and np.isfinite(loss):
        side = "below" if loss <= entropy else "above"
        line += (
            f"; corpus unigram entropy {entropy:.4f} {unit}: {abs(entropy - loss):.3f} {unit} "
            f"{side} it"
        )
    if "accuracy" in result.eval_metrics:
        line += f"; accuracy {result.eval_metrics['accuracy']:.2%}"
    console.print(f"[bold]{line}[/bold]")
    console.print(f"run directory {result.run_dir}; wall time {result.wall_seconds:.1f} s")
