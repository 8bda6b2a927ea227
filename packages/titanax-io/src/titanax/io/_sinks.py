"""Metric sinks: stdout (rich), CSV and JSONL files. All implement ``titanax.exec.MetricSink``.

Every sink takes host numbers only (Python or NumPy scalars): the Engine fetches a step's
metrics from the devices in one transfer and hands the floats to each sink. Sinks write on
process 0 only (on the others ``write`` checks its arguments and does nothing), flush on
``close``, and are context managers.
"""

from __future__ import annotations

import abc
import csv
import json
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO, Any

import jax
import numpy as np

from titanax.io._errors import MetricTypeError, SinkError
from titanax.mesh import process_index

__all__ = ["CSVSink", "JSONLSink", "StdoutSink", "host_metrics"]


def host_metrics(api: str, step: object, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Checks one ``write`` call and returns the metrics as Python floats (order kept).

    Raises:
      MetricTypeError: ``step`` is not an int, or a value is not a host number (a
        ``jax.Array`` above all); the message names the metric.
      SinkError: ``metrics`` is not a mapping, or a name is not a non-empty string.
    """
    if isinstance(step, bool) or not isinstance(step, int | np.integer):
        raise MetricTypeError(f"{api}: step={step!r} must be an int.")
    if not isinstance(metrics, Mapping):
        raise SinkError(
            f"{api}: metrics must be a mapping name -> float, got {type(metrics).__name__}."
        )
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise SinkError(f"{api}: metric name {name!r} must be a non-empty string.")
        if isinstance(value, jax.Array):
            raise MetricTypeError(
                f"{api}: metric {name!r} is a jax.Array {jax.typeof(value)}; sinks take host "
                "floats only. Fetch all metrics once per log step with "
                "jax.device_get(metrics) (the Engine does this) and pass the floats."
            )
        scalar = isinstance(value, bool | int | float | np.integer | np.floating | np.bool_)
        if scalar or (
            isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "biuf"
        ):
            out[name] = float(value)
        else:
            raise MetricTypeError(
                f"{api}: metric {name!r} is a {type(value).__name__}, not a host number; pass "
                "a Python or NumPy scalar."
            )
    return out


class _Sink(abc.ABC):
    """Shared plumbing: process-0 gating, argument checks, closed state, context manager."""

    _name = "Sink"

    def __init__(self) -> None:
        self._active = process_index() == 0
        self._closed = False

    @property
    def active(self) -> bool:
        """Whether this process writes (process 0) or ignores writes (all others)."""
        return self._active

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Records ``metrics`` for ``step``.

        Args:
          step: the training step (optimizer updates applied so far).
          metrics: name -> host number (Python/NumPy scalar), e.g. ``{"loss": 2.31}``.

        Raises:
          MetricTypeError: a value is not a host number (e.g. a ``jax.Array``).
          SinkError: the sink is closed, or a name is not a string (CSV: or is new).
        """
        api = f"{self._name}.write(step={step})"
        if self._closed:
            raise SinkError(f"{api}: the sink is closed; create a new one to keep writing.")
        values = host_metrics(api, step, metrics)
        if self._active:
            self._write(int(step), values)

    @abc.abstractmethod
    def _write(self, step: int, metrics: dict[str, float]) -> None:
        """Writes one checked row (process 0 only)."""

    def close(self) -> None:
        """Flushes and releases the output; idempotent. Later writes raise SinkError."""
        if not self._closed:
            self._closed = True
            if self._active:
                self._close()

    def _close(self) -> None:
        return None

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class StdoutSink(_Sink):
    """Prints one line per write with ``rich``: ``step 100 │ loss 2.3100 │ lr 3.000e-04``.

    Args:
      keys: metric names to show, in this order (default: all, in the order written).
      digits: significant digits per value.
      console: a ``rich.console.Console`` to print to (default: stdout).
    """

    _name = "StdoutSink"

    def __init__(
        self,
        *,
        keys: Sequence[str] | None = None,
        digits: int = 5,
        console: Any = None,
    ) -> None:
        super().__init__()
        if isinstance(digits, bool) or not isinstance(digits, int) or digits < 1:
            raise SinkError(f"StdoutSink: digits={digits!r} must be a positive int.")
        self._keys = None if keys is None else tuple(keys)
        self._digits = digits
        if console is None and self._active:
            from rich.console import Console

            console = Console(highlight=False)
        self._console = console

    def _write(self, step: int, metrics: dict[str, float]) -> None:
        names = self._keys if self._keys is not None else tuple(metrics)
        parts = [f"[bold]step {step}[/bold]"]
        parts += [f"{k} {metrics[k]:.{self._digits}g}" for k in names if k in metrics]
        self._console.print(" │ ".join(parts))


class _FileSink(_Sink):
    def __init__(self, path: str | os.PathLike[str], *, append: bool) -> None:
        super().__init__()
        self._path = pathlib.Path(os.fspath(path))
        self._append = bool(append)
        self._file: IO[str] | None = None

    @property
    def path(self) -> pathlib.Path:
        """The file written."""
        return self._path

    def _open(self) -> IO[str]:
        if self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(  # noqa: SIM115 - held open across writes, closed in close()
                self._path, "a" if self._append else "w", newline="", encoding="utf-8"
            )
        return self._file

    def _close(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._file.close()
            self._file = None


class CSVSink(_FileSink):
    """Writes metrics as CSV rows ``step,<name>,...``; the columns are fixed by the first row.

    The header is ``step`` followed by the metric names of the first write, in its order. Later
    rows may omit names (empty cells) but may not add one: a new name raises
    :class:`~titanax.io.SinkError` naming it and the columns — a CSV file cannot grow columns
    after its header. Log new metrics from the first step (e.g. ``eval_loss`` as NaN until the
    first evaluation), or write them to a :class:`JSONLSink`, whose rows are free-form.

    With ``append=True`` (default) an existing non-empty file is continued — a resumed run adds
    rows — and its header fixes the columns. Rows are flushed as they are written.

    Args:
      path: the CSV file (parent directories are created).
      append: continue an existing file (default) or truncate it.

    Raises:
      SinkError: at ``write``, a metric name that is not a column, or ``step`` as a name.
    """

    _name = "CSVSink"

    def __init__(self, path: str | os.PathLike[str], *, append: bool = True) -> None:
        super().__init__(path, append=append)
        self._columns: tuple[str, ...] | None = None
        self._writer: Any = None
        if self._active and self._append and self._path.is_file():
            with open(self._path, newline="", encoding="utf-8") as existing:
                header = next(csv.reader(existing), None)
            if header:
                self._columns = tuple(header)

    @property
    def columns(self) -> tuple[str, ...] | None:
        """The header (``("step", ...)``), or ``None`` before the first write."""
        return self._columns

    def _write(self, step: int, metrics: dict[str, float]) -> None:
        api = f"CSVSink.write(step={step})"
        if "step" in metrics:
            raise SinkError(f"{api}: 'step' is the first column; do not pass it as a metric.")
        file = self._open()
        if self._writer is None:
            self._writer = csv.writer(file)
        if self._columns is None:
            self._columns = ("step", *metrics)
            self._writer.writerow(self._columns)
        new = [k for k in metrics if k not in self._columns]
        if new:
            raise SinkError(
                f"{api} to {self._path}: metric(s) {new} are not columns of this CSV file; its "
                f"columns were fixed by the first row: {list(self._columns)}. Log every metric "
                "from the first write (NaN until known), or use JSONLSink for free-form rows."
            )
        row = [str(step)] + [repr(metrics[c]) if c in metrics else "" for c in self._columns[1:]]
        self._writer.writerow(row)
        file.flush()


class JSONLSink(_FileSink):
    """Writes one JSON object per write: ``{"step": 100, "wall_time": ..., "loss": 2.31}``.

    Rows are free-form (names may change between writes). Non-finite values are written as
    ``NaN``/``Infinity`` (Python's ``json`` reads them back). Rows are flushed as written.

    Args:
      path: the ``.jsonl`` file (parent directories are created).
      append: continue an existing file (default) or truncate it.

    Raises:
      SinkError: at ``write``, ``step`` or ``wall_time`` used as a metric name.
    """

    _name = "JSONLSink"

    def __init__(self, path: str | os.PathLike[str], *, append: bool = True) -> None:
        super().__init__(path, append=append)

    def _write(self, step: int, metrics: dict[str, float]) -> None:
        clash = [k for k in ("step", "wall_time") if k in metrics]
        if clash:
            raise SinkError(
                f"JSONLSink.write(step={step}): {clash} are written by the sink; rename the metric."
            )
        file = self._open()
        file.write(json.dumps({"step": step, "wall_time": time.time(), **metrics}) + "\n")
        file.flush()
