"""``plot_metrics``: a PNG of loss curves from a run's CSV / JSONL metric files."""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
from collections.abc import Sequence

from titanax.io._errors import SinkError

__all__ = ["plot_metrics", "read_metrics"]


def _metric_files(run_dir: pathlib.Path) -> list[pathlib.Path]:
    if run_dir.is_file():
        return [run_dir]
    return sorted(
        p for p in run_dir.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".jsonl")
    )


def _float(value: object) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out


def read_metrics(path: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """Every numeric column of the CSV / JSONL files at ``path`` as ``name -> [(step, value)]``.

    ``path`` is a run directory (its ``*.csv`` and ``*.jsonl`` files are read, not recursively)
    or one file. Rows without a ``step`` and a truncated last JSONL line (a killed run) are
    skipped; series are sorted by step, a later file winning on equal steps.

    Raises:
      SinkError: ``path`` does not exist.
    """
    root = pathlib.Path(os.fspath(path))
    if not root.exists():
        raise SinkError(f"read_metrics: {root} does not exist.")
    series: dict[str, dict[int, float]] = {}

    def add(row: dict[str, object]) -> None:
        step = _float(row.get("step"))
        if step is None or not math.isfinite(step):
            return
        for name, raw in row.items():
            value = _float(raw)
            if name in ("step", "wall_time") or value is None:
                continue
            series.setdefault(name, {})[int(step)] = value

    for file in _metric_files(root):
        with open(file, newline="", encoding="utf-8") as handle:
            if file.suffix.lower() == ".csv":
                for row in csv.DictReader(handle):
                    add(dict(row))
            else:
                for line in handle:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(row, dict):
                        add(row)
    return {name: sorted(points.items()) for name, points in series.items()}


def plot_metrics(
    run_dir: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    *,
    keys: Sequence[str] = ("loss", "eval_loss"),
    title: str | None = None,
) -> pathlib.Path:
    """Draws the curves of ``keys`` against step from a run's metric files into a PNG.

    Reads ``*.csv`` (:class:`CSVSink`) and ``*.jsonl`` (:class:`JSONLSink`) files with
    :func:`read_metrics`; keys missing from the files are left out. Uses matplotlib's Agg
    canvas directly (no pyplot state, no display needed).

    Args:
      run_dir: a run directory or one metric file.
      out_png: the image to write (parent directories are created).
      keys: metric names to draw, one line each.
      title: figure title (default: the run directory's name).

    Returns:
      The path of the PNG.

    Raises:
      SinkError: none of ``keys`` is in the files (the message lists the names found).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    root = pathlib.Path(os.fspath(run_dir))
    series = read_metrics(root)
    present = [k for k in keys if series.get(k)]
    if not present:
        raise SinkError(
            f"plot_metrics: none of {list(keys)} is in the metric files of {root} (found "
            f"{sorted(series)}). Pass keys= with names that were logged."
        )
    figure = Figure(figsize=(7.0, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for key in present:
        steps, values = zip(*series[key], strict=True)
        axes.plot(steps, values, label=key, marker="." if len(steps) < 50 else None)
    axes.set_xlabel("step")
    axes.set_ylabel(", ".join(present))
    axes.set_title(title if title is not None else (root.stem if root.is_file() else root.name))
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    out = pathlib.Path(os.fspath(out_png))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out
