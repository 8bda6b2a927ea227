"""The run directory's metric files: training and validation rows routed to their own sinks.

``Engine.fit`` writes training metrics (``loss``, ``tokens_per_s``, ...) and validation metrics
(``eval_loss``, ...) through the same sink list. A CSV file's columns are fixed by its first row,
so training rows go to ``metrics.csv`` and validation rows to ``eval.csv``; TensorBoard and JSONL
take both. Validation rows are renamed on the way (:data:`EVAL_RENAMES`). A resumed run appends
to the same files after dropping the rows logged after its checkpoint.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from titanax.cli._config import LoggingConfig

__all__ = ["RunSinks", "make_sinks"]

logger = logging.getLogger("titanax.cli")

EVAL_PREFIX = "eval_"

EVAL_RENAMES: dict[str, str | None] = {
    "eval_count": "eval_targets_per_batch",
    "eval_loss_sum": None,
}
"""How validation metrics are written: ``Engine.evaluate`` averages every metric over batches,
so its ``count`` is the number of predicted targets (tokens, or labels) per validation batch —
written as ``eval_targets_per_batch`` — and its ``loss_sum`` a per-batch mean of sums that
``eval_loss`` (the exact ratio over all batches) already holds, so it is left out."""


def _fit_columns(sink: Any, metrics: Mapping[str, float]) -> dict[str, float]:
    """Drops names a CSV sink cannot take once its header is fixed (e.g. after a resume)."""
    columns = getattr(sink, "columns", None)
    if not columns:
        return dict(metrics)
    kept = {k: v for k, v in metrics.items() if k in columns}
    if len(kept) != len(metrics):
        logger.debug("%s: dropping %s (not columns)", sink, sorted(set(metrics) - set(kept)))
    return kept


class RunSinks:
    """A ``titanax.exec.MetricSink`` that routes each write by metric name.

    Args:
      train: sinks for rows without ``eval_`` names.
      evaluation: sinks for rows of ``eval_`` names.
      both: sinks that take every row.

    Attributes:
      last_eval: ``(step, metrics)`` of the last validation row, named as ``Engine.evaluate``
        returned them (``eval_loss_sum``, ``eval_count``: before :data:`EVAL_RENAMES`).
    """

    def __init__(
        self, *, train: Sequence[Any] = (), evaluation: Sequence[Any] = (), both: Sequence[Any] = ()
    ) -> None:
        self.train = tuple(train)
        self.evaluation = tuple(evaluation)
        self.both = tuple(both)
        self.last_eval: tuple[int, dict[str, float]] | None = None

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Writes ``metrics`` at ``step`` to the sinks its names belong to."""
        raw = {k: v for k, v in metrics.items() if k.startswith(EVAL_PREFIX)}
        evals: dict[str, float] = {}
        for key, value in raw.items():
            name = EVAL_RENAMES.get(key, key)
            if name is not None:
                evals[name] = value
        metrics = {**{k: v for k, v in metrics.items() if not k.startswith(EVAL_PREFIX)}, **evals}
        train = {k: v for k, v in metrics.items() if not k.startswith(EVAL_PREFIX)}
        for part, sinks in ((train, self.train), (evals, self.evaluation)):
            if part:
                for sink in sinks:
                    row = _fit_columns(sink, part)
                    if row:
                        sink.write(step, row)
        for sink in self.both:
            sink.write(step, metrics)
        if raw:
            self.last_eval = (int(step), raw)

    def close(self) -> None:
        """Closes every sink (each once)."""
        for sink in (*self.train, *self.evaluation, *self.both):
            sink.close()


def make_sinks(
    config: LoggingConfig, run_dir: pathlib.Path, *, resume_from_step: int | None = None
) -> tuple[RunSinks, list[str]]:
    """The sinks the ``logging`` section asks for, and the paths they write (for the screen).

    Args:
      config: the ``logging`` section.
      run_dir: the run directory.
      resume_from_step: the step training restarts from (the checkpoint's; ``0`` for a fresh
        start). The CSV and JSONL files drop their rows after it and TensorBoard purges its
        later events (``titanax.io`` sinks' ``resume_from_step``), so the steps a killed run
        logged after its last checkpoint are not written twice.
    """
    from titanax.io import CSVSink, JSONLSink, StdoutSink, TensorBoardSink

    resume = resume_from_step
    train: list[Any] = []
    evaluation: list[Any] = []
    both: list[Any] = []
    paths: list[str] = []
    if config.csv:
        train.append(CSVSink(run_dir / "metrics.csv", resume_from_step=resume))
        evaluation.append(CSVSink(run_dir / "eval.csv", resume_from_step=resume))
        paths += [str(run_dir / "metrics.csv"), str(run_dir / "eval.csv")]
    if config.tensorboard:
        both.append(TensorBoardSink(run_dir / "tensorboard", resume_from_step=resume))
        paths.append(str(run_dir / "tensorboard"))
    if config.jsonl:
        both.append(JSONLSink(run_dir / "metrics.jsonl", resume_from_step=resume))
        paths.append(str(run_dir / "metrics.jsonl"))
    if config.stdout:
        both.append(StdoutSink())
    return RunSinks(train=train, evaluation=evaluation, both=both), paths
