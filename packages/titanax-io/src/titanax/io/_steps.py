"""Which step directories of a checkpoint root are complete.

Orbax writes a step into ``<step>.orbax-checkpoint-tmp-<n>`` and, when every array and the
metadata are on disk, writes ``commit_success.txt`` into it and renames it to ``<step>``. A step
counts only when its directory is named by the bare step number and holds that marker: a save
killed half-way leaves a temporary directory (or, on file systems without atomic rename, a step
directory without the marker) and is never listed, so the previous complete step stays the
latest.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time

from titanax.io._errors import CheckpointError, CheckpointSaveError

__all__ = [
    "COMMIT_MARKER",
    "committed_steps",
    "damaged_step_error",
    "is_committed",
    "move_incomplete_aside",
    "uncommitted_entries",
]

logger = logging.getLogger(__name__)

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


def move_incomplete_aside(api: str, directory: pathlib.Path) -> list[str]:
    """Renames every step directory without ``commit_success.txt`` to
    ``<step>.incomplete-<UTC time>``; returns the new names.

    Orbax counts a bare ``<step>`` directory as a checkpoint: it refuses to save that step
    again ("already exists") and its retention policy counts it among the newest steps (so it
    could delete a complete one). A crashed copy or a file system without atomic rename can
    leave such a directory. Moving it aside — never deleting it — lets a resumed run save the
    step again, keeps the bytes for inspection, and, as the new name is not a step number,
    nothing ever restores it. Each move is logged at WARNING.

    Raises:
      CheckpointSaveError: a directory could not be renamed (permissions).
    """
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = []
    for entry in sorted(entries, key=lambda e: e.name):
        if not (entry.name.isdigit() and entry.is_dir()):
            continue
        if os.path.isfile(os.path.join(entry.path, COMMIT_MARKER)):
            continue
        target = directory / f"{entry.name}.incomplete-{stamp}"
        n = 1
        while target.exists():
            n += 1
            target = directory / f"{entry.name}.incomplete-{stamp}-{n}"
        try:
            os.rename(entry.path, target)
        except OSError as err:
            raise CheckpointSaveError(
                f"{api}: {entry.path} is an incomplete step directory (no {COMMIT_MARKER}, "
                f"left by a crashed or foreign write) and could not be moved aside to "
                f"{target.name}: {type(err).__name__}: {err}. Move or delete it by hand."
            ) from err
        logger.warning(
            "%s: %s has no %s (an interrupted or foreign write); moved it aside to %s. It is "
            "never restored; delete it once you no longer need it.",
            api,
            entry.path,
            COMMIT_MARKER,
            target,
        )
        moved.append(target.name)
    return moved


def _short(err: BaseException, limit: int = 300) -> str:
    """``Type: message`` of ``err`` on one line, without TensorStore's long spec dump."""
    text = str(err)
    for marker in (" [tensorstore_spec", "See full TensorStore details"):
        text = text.split(marker)[0]
    text = " ".join(text.split()).rstrip(" .;:(")
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}"


def damaged_step_error(
    api: str, step_dir: pathlib.Path, what: str, err: BaseException | None = None
) -> CheckpointError:
    """The error for a committed step whose files cannot be read back.

    Args:
      api: the call that read, for the message.
      step_dir: the step directory.
      what: what could not be read and why, e.g. ``"its metadata (meta/metadata) is not valid
        JSON"``.
      err: the underlying Orbax / TensorStore / JSON exception, summarized in the message
        (chain it with ``raise ... from err``).
    """
    complete = [s for s in committed_steps(step_dir.parent) if str(s) != step_dir.name]
    cause = f" ({_short(err)})" if err is not None else ""
    return CheckpointError(
        f"{api}: step {step_dir.name} at {step_dir} is damaged: {what}{cause}. The step was "
        "committed, but its files were deleted, truncated or overwritten since. Move the "
        f"directory away (e.g. `mv {step_dir} {step_dir}.damaged`) and the newest other "
        f"complete step is used (others: {complete}), or restore one of them explicitly."
    )
