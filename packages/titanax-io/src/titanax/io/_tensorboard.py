"""``TensorBoardSink``: scalars as TensorBoard event files, written with tensorboardX."""

from __future__ import annotations

import os
import pathlib
from typing import Any

from titanax.io._errors import SinkError
from titanax.io._sinks import _Sink

__all__ = ["TensorBoardSink"]


class TensorBoardSink(_Sink):
    """Writes every metric as a TensorBoard scalar (tag = metric name) at its step.

    Uses ``tensorboardX.SummaryWriter`` (install ``titanax-io[tensorboard]``); the event files
    are the standard format, read by TensorBoard itself (``tensorboard --logdir``) and by
    ``tensorboard.backend.event_processing.event_accumulator.EventAccumulator``. Events are
    flushed every ``flush_secs`` and on ``close``.

    Args:
      logdir: directory for the event files (created).
      flush_secs: seconds between background flushes.

    Raises:
      SinkError: tensorboardX is not installed.
    """

    _name = "TensorBoardSink"

    def __init__(self, logdir: str | os.PathLike[str], *, flush_secs: int = 30) -> None:
        super().__init__()
        self._logdir = pathlib.Path(os.fspath(logdir))
        self._writer: Any = None
        if self._active:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as err:
                raise SinkError(
                    "TensorBoardSink needs tensorboardX: pip install 'titanax-io[tensorboard]'."
                ) from err
            self._logdir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(logdir=str(self._logdir), flush_secs=flush_secs)

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
