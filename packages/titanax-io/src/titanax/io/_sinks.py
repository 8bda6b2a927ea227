"""Metric sinks: stdout (rich), CSV and JSONL files. All implement ``titanax.exec.MetricSink``.

Every sink takes host numbers only (Python or NumPy scalars): the Engine fetches a step's
metrics from the devices in one transfer and hands the floats to each sink. Sinks write on
process 0 only (on the others ``write`` checks its arguments and does nothing), flush on
``close``, and are context managers.
"""

from __future__ import annotations

import abc
import csv
import io
import json
import logging
import math
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

__all__ = ["CSVSink", "JSONLSink", "StdoutSink", "check_resume_step", "host_metrics"]

logger = logging.getLogger(__name__)


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


def check_resume_step(api: str, resume_from_step: object) -> int | None:
    """``resume_from_step`` as an int, or ``None``.

    Raises:
      SinkError: it is not ``None`` or a non-negative int.
    """
    if resume_from_step is None:
        return None
    if (
        isinstance(resume_from_step, bool)
        or not isinstance(resume_from_step, int | np.integer)
        or resume_from_step < 0
    ):
        raise SinkError(
            f"{api}: resume_from_step={resume_from_step!r} must be None or a non-negative int "
            "(the step of the checkpoint the run resumes from)."
        )
    return int(resume_from_step)


def _step_of(text: object) -> int | None:
    """The int a ``step`` cell or JSON value holds, or ``None`` when it holds none."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(value) if math.isfinite(value) and value == int(value) else None


class _FileSink(_Sink):
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        append: bool,
        resume_from_step: int | None,
    ) -> None:
        super().__init__()
        self._path = pathlib.Path(os.fspath(path))
        self._append = bool(append)
        self._resume = check_resume_step(self._name, resume_from_step)
        self._file: IO[str] | None = None
        if self._resume is not None and not self._append:
            raise SinkError(
                f"{self._name}({str(self._path)!r}): resume_from_step={self._resume} needs "
                "append=True (with append=False the file is truncated anyway)."
            )
        if self._active and self._path.is_dir():
            raise SinkError(
                f"{self._name}: path {str(self._path)!r} is an existing directory; pass a file "
                f"path inside it, e.g. {str(self._path / ('metrics' + self._suffix))!r}."
            )

    _suffix = ""

    @property
    def path(self) -> pathlib.Path:
        """The file written."""
        return self._path

    def _read_existing(self) -> str | None:
        """The text of the file to continue, or ``None`` when there is none (process 0)."""
        if not (self._active and self._append and self._path.is_file()):
            return None
        try:
            return self._path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise SinkError(
                f"{self._name}: cannot read the existing file {self._path} to continue it: "
                f"{type(err).__name__}: {err}. Pass append=False to overwrite it, or another "
                "path."
            ) from err

    def _rewrite(self, lines: list[str], dropped: int, total: int) -> None:
        """Replaces the file by ``lines`` (atomically) after dropping rows for a resume."""
        tmp = self._path.with_name(self._path.name + ".resume-tmp")
        try:
            tmp.write_text("".join(lines), encoding="utf-8", newline="")
            os.replace(tmp, self._path)
        except OSError as err:
            raise SinkError(
                f"{self._name}: cannot rewrite {self._path} for resume_from_step="
                f"{self._resume}: {type(err).__name__}: {err}."
            ) from err
        logger.warning(
            "%s: resume_from_step=%d: dropped %d of %d rows of %s written after that step "
            "(or unreadable) so they are not duplicated",
            self._name,
            self._resume,
            dropped,
            total,
            self._path,
        )

    def _open(self) -> IO[str]:
        if self._file is None:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                needs_newline = (
                    self._append
                    and self._path.is_file()
                    and self._path.stat().st_size > 0
                    and not self._path.read_bytes().endswith(b"\n")
                )
                self._file = open(  # noqa: SIM115 - held open across writes, closed in close()
                    self._path, "a" if self._append else "w", newline="", encoding="utf-8"
                )
            except OSError as err:
                raise SinkError(
                    f"{self._name}: cannot open {self._path} for writing: "
                    f"{type(err).__name__}: {err}. Pass a writable file path."
                ) from err
            if needs_newline:  # the last row of a killed run was cut: start a fresh line
                self._file.write("\n")
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
    :class:`~titanax.io.SinkError` naming it, the columns missing from the row and the
    columns — a CSV file cannot grow columns after its header. Log new metrics from the first
    step (e.g. ``eval_loss`` as NaN until the first evaluation), or write them to a
    :class:`JSONLSink`, whose rows are free-form. Non-finite values are written as ``nan``,
    ``inf`` and ``-inf``.

    With ``append=True`` (default) an existing non-empty file is continued — a resumed run adds
    rows — and its header fixes the columns. Rows are flushed as they are written.

    Args:
      path: the CSV file (parent directories are created).
      append: continue an existing file (default) or truncate it.
      resume_from_step: the step of the checkpoint a resumed run restarts from. Rows
        of the existing file with a larger step (written after that checkpoint by the run that
        crashed) are dropped when the sink opens, so the resumed run does not duplicate them;
        unreadable rows (a line cut by a kill) are dropped too. Needs ``append=True``;
        ``None`` (default) keeps every row.

    Raises:
      SinkError: ``path`` is a directory, the existing file cannot be read or its header does
        not start with ``step``, ``resume_from_step`` is invalid or given with
        ``append=False``; at ``write``, a metric name that is not a column (the message lists
        the new and the missing names), ``step`` as a name, or a file that cannot be opened.

    Example:
      >>> import pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.csv"
      >>> with CSVSink(path) as sink:  # the run that crashed after step 3
      ...     for step in (1, 2, 3):
      ...         sink.write(step, {"loss": 1.0 / step})
      >>> with CSVSink(path, resume_from_step=2) as sink:  # resumed from the step-2 checkpoint
      ...     sink.write(3, {"loss": 0.25})
      >>> path.read_text().split()
      ['step,loss', '1,1.0', '2,0.5', '3,0.25']
    """

    _name = "CSVSink"
    _suffix = ".csv"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        append: bool = True,
        resume_from_step: int | None = None,
    ) -> None:
        super().__init__(path, append=append, resume_from_step=resume_from_step)
        self._columns: tuple[str, ...] | None = None
        self._writer: Any = None
        text = self._read_existing()
        if text:
            rows = list(csv.reader(io.StringIO(text, newline="")))
            header = rows[0] if rows else []
            if header and header[0] != "step":
                raise SinkError(
                    f"CSVSink: the existing file {self._path} does not start with a 'step' "
                    f"column (header {header[:8]}); it was not written by CSVSink. Pass "
                    "append=False to overwrite it, or another path."
                )
            self._columns = tuple(header) if header else None
            if self._resume is not None and rows:
                kept = [header] + [
                    r
                    for r in rows[1:]
                    if len(r) == len(header)
                    and (s := _step_of(r[0])) is not None
                    and s <= self._resume
                ]
                if len(kept) < len(rows):
                    buffer = io.StringIO(newline="")
                    csv.writer(buffer).writerows(kept)
                    self._rewrite([buffer.getvalue()], len(rows) - len(kept), len(rows) - 1)

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
            missing = [c for c in self._columns[1:] if c not in metrics]
            raise SinkError(
                f"{api} to {self._path}: the row does not fit the CSV header "
                f"{list(self._columns)}: new metric(s) {new}"
                + (f", missing {missing} (those would be empty cells)" if missing else "")
                + ". A CSV file cannot grow columns after its header (fixed by the first row "
                "or the existing file). Log every metric from the first write (NaN until "
                "known), write the new ones to a JSONLSink (free-form rows), or start a new "
                "file (another path, or append=False)."
            )
        row = [str(step)] + [repr(metrics[c]) if c in metrics else "" for c in self._columns[1:]]
        self._writer.writerow(row)
        file.flush()


def _json_value(value: float) -> float | None:
    return value if math.isfinite(value) else None


class JSONLSink(_FileSink):
    """Writes one JSON object per write: ``{"step": 100, "wall_time": ..., "loss": 2.31}``.

    Rows are free-form (names may change between writes). Every line is strict JSON (RFC 8259,
    accepted by any parser): a non-finite value (NaN, +-inf) is written as ``null`` — the
    metric was logged but had no finite value. Rows are flushed as written.

    Args:
      path: the ``.jsonl`` file (parent directories are created).
      append: continue an existing file (default) or truncate it.
      resume_from_step: the step of the checkpoint a resumed run restarts from. Rows
        of the existing file with a larger step (written after that checkpoint by the run that
        crashed) are dropped when the sink opens, so the resumed run does not duplicate them;
        unreadable rows (a line cut by a kill) are dropped too. Needs ``append=True``;
        ``None`` (default) keeps every row.

    Raises:
      SinkError: ``path`` is a directory, the existing file cannot be read,
        ``resume_from_step`` is invalid or given with ``append=False``; at ``write``,
        ``step`` or ``wall_time`` used as a metric name, or a file that cannot be opened.
    """

    _name = "JSONLSink"
    _suffix = ".jsonl"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        append: bool = True,
        resume_from_step: int | None = None,
    ) -> None:
        super().__init__(path, append=append, resume_from_step=resume_from_step)
        text = self._read_existing()
        if text and self._resume is not None:
            lines = text.splitlines(keepends=True)
            kept = []
            for line in lines:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                step = _step_of(row.get("step")) if isinstance(row, dict) else None
                if step is not None and step <= self._resume:
                    kept.append(line if line.endswith("\n") else line + "\n")
            if len(kept) < len(lines):
                self._rewrite(kept, len(lines) - len(kept), len(lines))

    def _write(self, step: int, metrics: dict[str, float]) -> None:
        clash = [k for k in ("step", "wall_time") if k in metrics]
        if clash:
            raise SinkError(
                f"JSONLSink.write(step={step}): {clash} are written by the sink; rename the metric."
            )
        file = self._open()
        row: dict[str, float | None] = {"step": step, "wall_time": time.time()}
        row.update((k, _json_value(v)) for k, v in metrics.items())
        file.write(json.dumps(row, allow_nan=False) + "\n")
        file.flush()
