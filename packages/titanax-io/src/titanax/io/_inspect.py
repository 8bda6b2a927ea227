"""``inspect_checkpoint``: what a checkpoint directory holds, read from metadata alone.

No arrays are read and no devices are needed: a checkpoint written by 64 GPUs can be inspected
in a 1-CPU process. Nothing on disk is changed (temporary directories are reported, not removed).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from titanax.io._checkpoint import orbax_checkpoint
from titanax.io._errors import CheckpointError
from titanax.io._paths import flat_with_paths, format_shape
from titanax.io._steps import (
    committed_steps,
    damaged_step_error,
    is_committed,
    uncommitted_entries,
)
from titanax.io._tree_diff import leaf_spec

__all__ = ["CheckpointInfo", "LeafInfo", "inspect_checkpoint"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LeafInfo:
    """One saved array.

    Attributes:
      path: ``"/"``-joined key path (``"params/blocks/0/attn/q/kernel"``).
      shape: global shape.
      dtype: NumPy dtype name (``"float32"``, ``"bfloat16"``, ``"uint32"``).
      saved_sharding: how it was laid out when saved, e.g. ``"P('data', 'tensor') on
        data=2 × tensor=4"``, ``"single device"``, or ``None`` when not recorded.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    saved_sharding: str | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the whole (global) array."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointInfo:
    """What :func:`inspect_checkpoint` found.

    Attributes:
      directory: the checkpoint root.
      steps: every complete step, ascending.
      step: the step described by ``leaves`` and ``metadata``.
      leaves: every saved array of that step, in path order.
      metadata: that step's JSON metadata (``{}`` if it has none).
      skipped: incomplete entries that were ignored (``"7.orbax-checkpoint-tmp-..."``, or a step
        directory without ``commit_success.txt``).
    """

    directory: pathlib.Path
    steps: tuple[int, ...]
    step: int
    leaves: tuple[LeafInfo, ...]
    metadata: Mapping[str, Any]
    skipped: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        """The path of every leaf."""
        return tuple(leaf.path for leaf in self.leaves)

    @property
    def nbytes(self) -> int:
        """Total bytes of all arrays of the step."""
        return sum(leaf.nbytes for leaf in self.leaves)

    def describe(self) -> str:
        """A readable table (rich, no colour): steps, then one row per leaf, then metadata keys."""
        from rich.console import Console
        from rich.table import Table

        title = (
            f"{self.directory} — step {self.step} of {list(self.steps)}, {len(self.leaves)} "
            f"arrays, {self.nbytes / 2**20:.2f} MiB"
        )
        table = Table(title=title, title_justify="left")
        for column in ("path", "shape", "dtype", "saved sharding"):
            table.add_column(column)
        for leaf in self.leaves:
            table.add_row(
                leaf.path, format_shape(leaf.shape), leaf.dtype, leaf.saved_sharding or ""
            )
        buffer = io.StringIO()
        console = Console(file=buffer, width=120, color_system=None, force_terminal=False)
        console.print(table)
        keys = sorted(k for k in self.metadata if k != "tree")
        console.print(f"metadata keys: {keys}")
        if self.skipped:
            console.print(f"skipped incomplete entries: {list(self.skipped)}")
        return buffer.getvalue().rstrip() + "\n"


def _sharding_text(sharding: Any) -> str | None:
    if sharding is None:
        return None
    spec = getattr(sharding, "partition_spec", None)
    names = getattr(sharding, "axis_names", None)
    shape = getattr(sharding, "shape", None)
    if spec is not None and names is not None and shape is not None:
        entries = ", ".join(
            repr(tuple(e)) if isinstance(e, list | tuple) else repr(e) for e in spec
        )
        mesh = " × ".join(f"{n}={int(s)}" for n, s in zip(names, list(shape), strict=False))
        return f"P({entries}) on {mesh}"
    if "SingleDevice" in type(sharding).__name__:
        return "single device"
    return type(sharding).__name__


def inspect_checkpoint(path: str | os.PathLike[str], *, step: int | None = None) -> CheckpointInfo:
    """Lists the steps of a checkpoint directory and describes one of them from metadata.

    Reads Orbax's tree metadata and the JSON metadata written by
    :class:`~titanax.io.OrbaxCheckpointer`; never reads array data, never needs the devices
    the checkpoint was written on, and changes nothing on disk.

    Args:
      path: the checkpoint root (holding ``<step>/`` directories) or one step directory.
      step: the step to describe (default: the latest complete one; ignored when ``path`` is a
        step directory).

    Returns:
      A :class:`CheckpointInfo`; ``info.describe()`` renders it as a table.

    Raises:
      CheckpointError: ``path`` does not exist, has no complete step, or lacks ``step``; the
        step is damaged (its array metadata or JSON metadata cannot be read).
    """
    where = f"inspect_checkpoint({os.fspath(path)!r})"
    root = pathlib.Path(os.fspath(path)).expanduser().absolute()
    if not root.is_dir():
        raise CheckpointError(f"{where}: {root} is not a directory.")
    if is_committed(root):
        directory, chosen = root.parent, int(root.name)
        steps = committed_steps(directory)
        skipped = tuple(uncommitted_entries(directory))
    else:
        directory = root
        steps = committed_steps(directory)
        skipped = tuple(uncommitted_entries(directory))
        if not steps:
            raise CheckpointError(
                f"{where}: no complete checkpoint step in {directory}"
                + (f" (skipped incomplete entries: {list(skipped)})" if skipped else "")
                + "."
            )
        chosen = steps[-1] if step is None else step
        if chosen not in steps:
            raise CheckpointError(
                f"{where}: step {chosen} is not complete; complete steps: {steps}."
            )
    step_dir = directory / str(chosen)
    state_dir, meta_dir = step_dir / "state", step_dir / "meta"
    if not state_dir.is_dir():
        raise CheckpointError(
            f"{where}: {step_dir} has no 'state' item; it was not written by OrbaxCheckpointer."
        )
    ocp = orbax_checkpoint()
    handler = ocp.StandardCheckpointHandler()
    try:
        tree = handler.metadata(state_dir).tree
    except Exception as err:
        raise damaged_step_error(where, step_dir, "its array metadata cannot be read", err) from err
    finally:
        handler.close()
    leaves = []
    for leaf_path, leaf in sorted(flat_with_paths(tree)):
        shape, dtype = leaf_spec(leaf)
        leaves.append(
            LeafInfo(
                path=leaf_path,
                shape=shape,
                dtype=dtype,
                saved_sharding=_sharding_text(getattr(leaf, "sharding", None)),
            )
        )
    metadata: dict[str, Any] = {}
    if meta_dir.is_dir():
        json_handler = ocp.JsonCheckpointHandler()
        try:
            loaded = json_handler.restore(meta_dir, args=ocp.args.JsonRestore())
        except Exception as err:
            raise damaged_step_error(
                where, step_dir, f"its metadata in {meta_dir} is not valid JSON", err
            ) from err
        finally:
            json_handler.close()
        if not isinstance(loaded, Mapping):
            raise damaged_step_error(
                where, step_dir, f"its metadata in {meta_dir} is a JSON {type(loaded).__name__}"
            )
        metadata = dict(loaded)
    return CheckpointInfo(
        directory=directory,
        steps=tuple(steps),
        step=chosen,
        leaves=tuple(leaves),
        metadata=metadata,
        skipped=skipped,
    )
