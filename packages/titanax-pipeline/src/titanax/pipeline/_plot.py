"""``plot_schedule``: a schedule's tick table as a PNG timeline (matplotlib, Agg backend)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from titanax.pipeline._errors import PipelineError
from titanax.pipeline._schedule import Op, Schedule

__all__ = ["plot_schedule"]

logger = logging.getLogger(__name__)


def plot_schedule(
    schedule: Schedule, path: str | os.PathLike[str], *, dpi: int = 120, title: str | None = None
) -> Path:
    """Draws ``schedule`` as a timeline and writes it to ``path`` (PNG).

    One row per stage (stage 0 on top), one column per tick. Forward ops are filled boxes and
    backward ops hatched boxes, both colored by microbatch and labelled ``F3`` / ``B3``
    (``F3.1``: microbatch 3 on local chunk 1 for interleaved schedules); idle ticks stay blank.
    The title gives the kind, ``p``, ``m``, ``v``, the tick count and the bubble fraction.

    Uses ``matplotlib.figure.Figure`` with the Agg canvas directly (no pyplot state, no display).

    Args:
      schedule: the :class:`Schedule` to draw.
      path: output file; parent directories are created. A ``.png`` suffix is expected.
      dpi: resolution of the PNG.
      title: replaces the generated title when given.

    Returns:
      The path written, as ``pathlib.Path``.

    Raises:
      PipelineError: ``schedule`` is not a :class:`Schedule` or ``path`` does not end in
        ``.png``.

    Example:
      >>> plot_schedule(build_schedule("1f1b", stages=4, microbatches=8), "1f1b.png")
      PosixPath('1f1b.png')
    """
    if not isinstance(schedule, Schedule):
        raise PipelineError(
            f"plot_schedule: schedule must be a titanax.pipeline.Schedule, got "
            f"{type(schedule).__name__}; build one with build_schedule(kind, stages=..., "
            "microbatches=...)."
        )
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise PipelineError(
            f"plot_schedule: path {str(out)!r} does not end in '.png'; the timeline is written "
            "as a PNG image."
        )
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle
    from matplotlib.ticker import MaxNLocator

    p, n_ticks, m = schedule.stages, schedule.num_ticks, schedule.microbatches
    width = min(max(6.0, 0.32 * n_ticks + 1.5), 60.0)
    fig = Figure(figsize=(width, 0.55 * p + 1.6), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = _colors(m)
    label_size = max(4.0, min(8.0, 220.0 / max(n_ticks, 1)))
    labels = n_ticks * p <= 2000  # text is the slow part of drawing; huge tables go without
    boxes: dict[bool, tuple[list[Rectangle], list[tuple[float, float, float, float]]]] = {
        False: ([], []),
        True: ([], []),
    }
    for t in range(n_ticks):
        for s in range(p):
            op = int(schedule.op[t, s])
            if op == Op.IDLE:
                continue
            i, j = int(schedule.microbatch[t, s]), int(schedule.chunk[t, s])
            backward = op == Op.B
            boxes[backward][0].append(Rectangle((t, s), 1.0, 1.0))
            boxes[backward][1].append(colors[i])
            if labels:
                text = f"{'B' if backward else 'F'}{i}"
                if schedule.virtual_stages > 1:
                    text += f".{j}"
                ax.text(t + 0.5, s + 0.5, text, ha="center", va="center", fontsize=label_size)
    for backward, (rects, faces) in boxes.items():
        if rects:
            ax.add_collection(
                PatchCollection(
                    rects,
                    facecolors=faces,
                    edgecolors="black",
                    linewidths=0.5,
                    hatch="///" if backward else None,
                    alpha=0.75 if backward else 1.0,
                )
            )
    ax.set_xlim(0, n_ticks)
    ax.set_ylim(p, 0)
    ax.set_yticks(np.arange(p) + 0.5, [f"stage {s}" for s in range(p)])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("tick (unit-time F or B)")
    ax.set_title(
        title
        or (
            f"{schedule.kind}: stages={p}, microbatches={m}, virtual_stages="
            f"{schedule.virtual_stages} — {n_ticks} ticks, bubble "
            f"{schedule.bubble_fraction:.1%}"
        )
    )
    ax.legend(
        handles=[
            Patch(facecolor="white", edgecolor="black", label="F (forward)"),
            Patch(facecolor="white", edgecolor="black", hatch="///", label="B (backward)"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=8,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    logger.info("plot_schedule: wrote %s (%d stages × %d ticks)", out, p, n_ticks)
    return out


def _colors(count: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"] if count <= 20 else colormaps["turbo"]
    if count <= 20:
        return [tuple(cmap(i)) for i in range(count)]  # type: ignore[misc]
    return [tuple(cmap(i / max(count - 1, 1))) for i in range(count)]  # type: ignore[misc]
