"""Which step directories of a checkpoint root are complete.

Orbax writes a step into ``<step>.orbax-checkpoint-tmp-<n>`` and, when every array and the
metadata are on disk, writes ``commit_success.txt`` into it and renames it to ``<step>``. A step
counts only when its directory is named by the bare step number and holds that marker: a save
killed half-way leaves a temporary directory (or, on file systems without atomic rename, a step
directory without the marker) and is never listed, so the previous complete step stays the
latest.
"""

from __future__ import annotations

import os
import pathlib

__all__ = ["COMMIT_MARKER", "committed_steps", "is_committed", "uncommitted_entries"]

COMMIT_MARKER = "commit_success.txt"


def is_committed(step_dir: pathlib.Path) -> bool:
    """Whether ``step_dir`` is a finalized Orbax step directory."""
    return step_dir.name.isdigit() and (step_dir / COMMIT_MARKER).is_file()


def committed_steps(directory: pathlib.Path) -> list[int]:
    """The complete steps under ``directory``, ascending; ``[]`` when it does not exist."""
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    steps = [
        int(e.name)
        for e in entries
        if e.is_dir() and e.name.isdigit() and os.path.isfile(os.path.join(e.path, COMMIT_MARKER))
    ]
    return sorted(steps)


def uncommitted_entries(directory: pathlib.Path) -> list[str]:
    """Names of step-like directories that are not complete (temporary or without marker)."""
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for e in entries:
        if not e.is_dir():
            continue
        head = e.name.split(".", 1)[0]
        if head.isdigit() and not (
            e.name.isdigit() and os.path.isfile(os.path.join(e.path, COMMIT_MARKER))
        ):
            out.append(e.name)
    return sorted(out)
