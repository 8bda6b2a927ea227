"""MkDocs hook: pipeline schedule timelines drawn by ``titanax.pipeline`` at build time.

For each schedule in :data:`SCHEDULES` the hook builds the tick table with
``titanax.pipeline.build_schedule``, draws it with ``titanax.pipeline.plot_schedule`` into a
temporary directory and adds the PNG to the site as ``concepts/schedules/<name>.png``. A page
that contains the marker ``<!-- titanax:schedule-table -->`` gets it replaced by a table of the
same schedules' numbers (ticks, bubble fraction, peak live microbatches, stash slots), so the
figures and the numbers on the page always come from the code that runs the pipeline.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

logger = logging.getLogger("mkdocs.hooks.titanax")

# name -> (kind, stages, microbatches, virtual_stages)
SCHEDULES: dict[str, tuple[str, int, int, int]] = {
    "gpipe": ("gpipe", 4, 8, 1),
    "1f1b": ("1f1b", 4, 8, 1),
    "interleaved": ("interleaved", 4, 8, 2),
}
MARKER = "<!-- titanax:schedule-table -->"

_state: dict[str, Any] = {}


def _schedules() -> dict[str, Any]:
    from titanax.pipeline import build_schedule

    return {
        name: build_schedule(kind, stages=p, microbatches=m, virtual_stages=v)  # type: ignore[arg-type]
        for name, (kind, p, m, v) in SCHEDULES.items()
    }


def on_files(files: Files, config: Any) -> Files:
    """Draws every schedule and adds its PNG to the site's files."""
    from titanax.pipeline import plot_schedule

    out = Path(tempfile.mkdtemp(prefix="titanax-docs-schedules-"))
    _state["dir"] = out
    _state["schedules"] = _schedules()
    for name, schedule in _state["schedules"].items():
        png = plot_schedule(schedule, out / f"{name}.png", dpi=100)
        files.append(
            File.generated(config, f"concepts/schedules/{name}.png", abs_src_path=str(png))
        )
        logger.debug("drew %s", png)
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replaces the schedule-table marker with the schedules' numbers."""
    if MARKER not in markdown:
        return markdown
    rows = [
        "| schedule | stages p | microbatches m | virtual stages v | ticks | bubble "
        "| peak live microbatches per stage | stash slots per stage |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in _state["schedules"].items():
        rows.append(
            f"| `{name}` | {s.stages} | {s.microbatches} | {s.virtual_stages} | {s.num_ticks} "
            f"| {s.bubble_fraction:.1%} | {', '.join(map(str, s.peak_live))} | {s.stash_size} |"
        )
    return markdown.replace(MARKER, "\n".join(rows))


def on_post_build(config: Any) -> None:
    """Removes the temporary directory of the drawn PNGs."""
    directory = _state.pop("dir", None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
