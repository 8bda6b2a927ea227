"""``TensorBoardSink``: scalars as TensorBoard event files, written with tensorboardX."""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any

from titanax.io._errors import SinkError
from titanax.io._sinks import _Sink, check_resume_step

__all__ = ["TensorBoardSink"]


class TensorBoardSink(_Sink):
    """Writes every metric as a TensorBoard scalar (tag = metric name) at its step.

    Uses ``tensorboardX.SummaryWriter`` (install ``titanax-io[tensorboard]``); the event files
    are the standard format, read by TensorBoard itself (``tensorboard --logdir``) and by
    ``tensorboard.backend.event_processing.event_accumulator.EventAccumulator``. Events are
    flushed every ``flush_secs`` and on ``close``. Each sink writes a new event file (named
    with the time in nanoseconds, so two sinks opened in the same second never overwrite each
    other's file).

    Args:
      logdir: directory for the event files (created).
      flush_secs: seconds between background flushes.
      resume_from_step: the step of the checkpoint a resumed run restarts from. Events of
        earlier files in ``logdir`` with a larger step (written after that checkpoint by the
        run that crashed) are hidden from TensorBoard, so the resumed run's values replace
        them instead of doubling the curves. Passed to tensorboardX as
        ``SummaryWriter(purge_step=resume_from_step + 1)`` (TensorBoard purges events with
        ``step >= purge_step`` when it reads the new file); the files are not changed.
        ``None`` (default) hides nothing.

    Raises:
      SinkError: tensorboardX is not installed; ``logdir`` is an existing file;
        ``resume_from_step`` is not ``None`` or a non-negative int.
    """

    _name = "TensorBoardSink"

    def __init__(
        self,
        logdir: str | os.PathLike[str],
        *,
        flush_secs: int = 30,
        resume_from_step: int | None = None,
    ) -> None:
        super().__init__()
        self._logdir = pathlib.Path(os.fspath(logdir))
        self._writer: Any = None
        resume = check_resume_step("TensorBoardSink", resume_from_step)
        if self._active and self._logdir.exists() and not self._logdir.is_dir():
            raise SinkError(
                f"TensorBoardSink: logdir {str(self._logdir)!r} is an existing file; pass a "
                "directory for the event files."
            )
        if self._active:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as err:
                raise SinkError(
                    "TensorBoardSink needs tensorboardX: pip install 'titanax-io[tensorboard]'."
                ) from err
            self._logdir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(
                logdir=str(self._logdir),
                flush_secs=flush_secs,
                purge_step=None if resume is None else resume + 1,
                filename_suffix=f".{time.time_ns()}",
            )

    @property
    def logdir(self) -> pathlib.Path:
        """The event file directory."""
        return self._logdir

    def _write(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, global_step=step)

    def _close(self) -> None:
        self._writer.flush()
        self._writer.close()
