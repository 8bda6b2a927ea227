"""``OrbaxCheckpointer``: asynchronous, atomic checkpoints that restore onto the current layout.

Arrays are written and read by Orbax (``orbax.checkpoint.CheckpointManager`` with a composite of
``StandardSave`` for the state and ``JsonSave`` for the metadata); Titanax adds what a training
run needs around it: only committed steps count, a failed background save is raised (never
logged and forgotten), the restore target is checked against the saved tree before any array is
read, and every restored array lands directly in the sharding its target leaf names.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import jax

from titanax.io._errors import CheckpointError, CheckpointSaveError
from titanax.io._metadata import build_metadata
from titanax.io._paths import flat_with_paths, matches_any, path_str
from titanax.io._saveable import check_saveable
from titanax.io._steps import (
    COMMIT_MARKER,
    committed_steps,
    damaged_step_error,
    move_incomplete_aside,
    uncommitted_entries,
)
from titanax.io._tree_diff import (
    LeafSpec,
    abstract_target,
    diff_trees,
    leaf_spec,
    recorded_tree,
    saved_leaf_specs,
)
from titanax.mesh import process_count, process_index

__all__ = ["OrbaxCheckpointer"]

logger = logging.getLogger(__name__)

_STATE = "state"
_META = "meta"


def orbax_checkpoint() -> Any:
    """``orbax.checkpoint``, imported on first use (``import titanax.io`` stays light for
    processes that only log metrics or read data)."""
    import orbax.checkpoint

    return orbax.checkpoint


def _item_handlers() -> dict[str, Any]:
    ocp = orbax_checkpoint()
    return {_STATE: ocp.StandardCheckpointHandler(), _META: ocp.JsonCheckpointHandler()}


def _check_count(name: str, value: object, *, allow_none: bool) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(
            f"OrbaxCheckpointer: {name}={value!r} must be a positive int"
            f"{' or None' if allow_none else ''}."
        )
    return int(value)


def _check_step(api: str, step: object) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{api}: step={step!r} must be a non-negative int.")
    return int(step)


class OrbaxCheckpointer:
    """Saves and restores training state with Orbax; implements ``titanax.exec.CheckpointStore``.

    Each step is a directory ``<directory>/<step>/`` holding the state (``state/``, Orbax's
    OCDBT/TensorStore format, every process writing its own shards) and JSON metadata (``meta/``:
    the caller's metadata plus versions, step, wall time and the tree layout — see
    :mod:`titanax.io._metadata`). Saves are asynchronous by default: ``save`` returns as soon as
    the arrays were copied off the devices (they may then be donated or overwritten) and the
    files are written by a background thread. A save becomes visible only when it is complete
    (Orbax's atomic rename plus ``commit_success.txt``); a process killed mid-save leaves the
    previous step as the latest, and when the resumed run saves that step again, a leftover
    ``<step>`` directory without the marker is moved aside to ``<step>.incomplete-<UTC time>``
    (logged at WARNING; never restored, never deleted) instead of blocking the save.

    Restoring takes a *target*: a pytree of ``jax.ShapeDtypeStruct`` (or ``jax.Array``) whose
    every leaf carries the sharding it must have now — the current mesh and plan, e.g. from
    ``titanax.sharding.abstract_state``. Arrays are read straight into that layout, so a
    checkpoint saved on 8 devices as ``(data=2, tensor=4)`` restores onto 1 device, onto FSDP, or
    onto another tensor-parallel degree. Restores are strict: the saved and target trees must
    have the same paths, shapes and dtypes, or a :class:`~titanax.io.CheckpointError` lists
    every difference; ``partial=`` restores only the paths matching some globs.

    Args:
      directory: root directory of the run's checkpoints (created if missing; local or shared
        file system).
      keep: how many of the newest complete steps to keep (older ones are deleted after each
        save); ``None`` keeps every step.
      keep_every: additionally keep forever every step divisible by this number (``None``: no
        permanent steps).
      async_save: write in the background (default) or finish each save before returning.

    Raises:
      CheckpointError: ``keep`` or ``keep_every`` is not a positive int; ``directory`` is an
        existing file, or cannot be created.

    Example:
      >>> import tempfile
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import NamedSharding, PartitionSpec as P
      >>> mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> state = {"w": jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, P("data")))}
      >>> with OrbaxCheckpointer(tempfile.mkdtemp(), keep=2) as ckpt:
      ...     ckpt.save(10, state, metadata={"data_position": 640})
      ...     replicated = NamedSharding(mesh, P())
      ...     target = {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=replicated)}
      ...     restored, meta = ckpt.restore(None, target)  # latest step, now replicated
      >>> restored["w"].sharding.spec, meta["step"], meta["data_position"]
      (P(), 10, 640)

    References:
      ``orbax.checkpoint.CheckpointManager``; ``orbax.checkpoint.args.StandardRestore``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        keep: int | None = 3,
        keep_every: int | None = None,
        async_save: bool = True,
    ) -> None:
        ocp = orbax_checkpoint()
        self._keep = _check_count("keep", keep, allow_none=True)
        self._keep_every = _check_count("keep_every", keep_every, allow_none=True)
        if not isinstance(async_save, bool):
            raise CheckpointError(f"OrbaxCheckpointer: async_save={async_save!r} must be a bool.")
        self._async = async_save
        self._directory = pathlib.Path(os.fspath(directory)).expanduser().absolute()
        if self._directory.exists() and not self._directory.is_dir():
            raise CheckpointError(
                f"OrbaxCheckpointer: directory={os.fspath(directory)!r} is an existing file "
                f"({self._directory}), not a directory. Pass the directory that holds (or will "
                "hold) the <step>/ checkpoint directories, e.g. runs/<name>/ckpt."
            )
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=self._keep)]  # None: keep all
        if self._keep_every is not None:
            policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=self._keep_every))
        policy = (
            policies[0]
            if len(policies) == 1
            else ocp.checkpoint_managers.AnyPreservationPolicy(policies=policies)
        )
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            preservation_policy=policy,
            cleanup_tmp_directories=True,
            create=True,
        )
        try:
            self._manager = ocp.CheckpointManager(
                self._directory, options=options, item_handlers=_item_handlers()
            )
        except OSError as err:
            raise CheckpointError(
                f"OrbaxCheckpointer: cannot create or open the checkpoint directory "
                f"{self._directory}: {type(err).__name__}: {err}. Check that its parents are "
                "directories and writable."
            ) from err
        self._pending: int | None = None
        self._saves = 0  # save() calls, identical on every process: names the barriers
        self._closed = False

    # -- facts ---------------------------------------------------------------------------------

    @property
    def directory(self) -> pathlib.Path:
        """The absolute root directory of the checkpoints."""
        return self._directory

    def all_steps(self) -> list[int]:
        """Every complete (committed) step on disk, ascending.

        Temporary directories (``<step>.orbax-checkpoint-tmp*``) and step directories without
        ``commit_success.txt`` are not listed. Reads the directory each time, so steps written
        by another process appear too.
        """
        return committed_steps(self._directory)

    def latest_step(self) -> int | None:
        """The newest complete step, or ``None`` when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def __repr__(self) -> str:
        return (
            f"OrbaxCheckpointer({str(self._directory)!r}, keep={self._keep}, "
            f"keep_every={self._keep_every}, async_save={self._async})"
        )

    # -- saving --------------------------------------------------------------------------------

    def _check_open(self, api: str) -> None:
        if self._closed:
            raise CheckpointError(
                f"OrbaxCheckpointer.{api}: the checkpointer for {self._directory} is closed; "
                "create a new OrbaxCheckpointer."
            )

    def _finish_pending(self, api: str) -> None:
        """Waits for the save in flight; raises its error (once) as CheckpointSaveError."""
        step, self._pending = self._pending, None
        where = f"OrbaxCheckpointer.{api}"
        try:
            self._manager.wait_until_finished()
        except Exception as err:
            raise CheckpointSaveError(
                f"{where}: the background save of step {step} to {self._directory} failed with "
                f"{type(err).__name__}: {err}. That step is not complete and will not be "
                f"restored; the latest complete step is {self.latest_step()}. Fix the cause "
                "(disk space, permissions) and save again."
            ) from err
        if step is not None and not (self._directory / str(step) / COMMIT_MARKER).is_file():
            raise CheckpointSaveError(
                f"{where}: the save of step {step} to {self._directory} ended without committing "
                f"(no {self._directory / str(step) / COMMIT_MARKER}); Orbax logged the cause. "
                f"The latest complete step is {self.latest_step()}."
            )

    def save(self, step: int, state: Any, *, metadata: Mapping[str, Any] | None = None) -> None:
        """Starts saving ``state`` as ``step`` with JSON ``metadata``.

        Waits for the previous save first (raising its error, if any), writes the arrays'
        device buffers to host memory, and returns; the files are written in the background
        when ``async_save`` (call :meth:`wait` to block until the step is complete). All
        processes of a multi-process run must call ``save`` with the same step.

        Args:
          step: non-negative step number; must not exist as a complete step yet (an
            incomplete ``<step>`` directory left by a crash is moved aside, see above).
          state: pytree of ``jax.Array`` (any sharding, scalars included), NumPy arrays and
            scalars of a numeric or bool dtype, Python ``bool``/``int``/``float``. Anything
            else (strings, Python ``complex``, object arrays, ints beyond 64 bits, typed PRNG
            keys) is refused before anything is written.
          metadata: JSON-safe mapping (str keys; dicts, lists, str, numbers, bool, None; NumPy
            scalars are converted). The Engine passes ``mesh``, ``plan``,
            ``plan_fingerprint``, ``optimizer_fingerprint``, ``data_position`` and
            ``config``. The keys ``format_version``, ``step``, ``wall_time``, ``versions``
            and ``tree`` are written by the checkpointer and may not be passed.

        Raises:
          CheckpointSaveError: the previous (background) save failed, or this one could not
            start (e.g. the directory is not writable).
          CheckpointError: ``step`` already exists as a complete step or is invalid, a leaf
            of ``state`` is not an array or number (every such path is listed), the metadata
            is not JSON or uses a reserved key, or Orbax rejects the state. Nothing is written
            or started then, and the checkpointer stays usable.
        """
        api = f"OrbaxCheckpointer.save(step={step})"
        self._check_open("save")
        step = _check_step(api, step)
        # Before anything starts: Orbax refuses such leaves only after it started the step's
        # background threads, which then keep the interpreter from exiting for minutes.
        check_saveable(api, state)
        record = build_metadata(step, state, metadata if metadata is not None else {})
        self._finish_pending("save")
        if (self._directory / str(step) / COMMIT_MARKER).is_file():
            raise CheckpointError(
                f"{api}: step {step} already exists in {self._directory} (complete steps: "
                f"{self.all_steps()}). Checkpoints are never overwritten; save under a new step "
                "or delete the old directory."
            )
        self._set_aside_incomplete(api)
        ocp = orbax_checkpoint()
        args = ocp.args.Composite(
            **{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(record)}
        )
        try:
            self._manager.save(step, args=args, force=True)
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{api}: Orbax rejected the state: {err}") from err
        except Exception as err:
            raise CheckpointSaveError(
                f"{api}: the save to {self._directory} could not start: {type(err).__name__}: {err}"
            ) from err
        self._pending = step
        if not self._async:
            self._finish_pending("save")

    def _set_aside_incomplete(self, api: str) -> None:
        """Moves incomplete ``<step>`` directories aside (process 0) so Orbax forgets them."""
        self._saves += 1
        moved = move_incomplete_aside(api, self._directory) if process_index() == 0 else []
        if process_count() > 1:
            ocp = orbax_checkpoint()
            ocp.multihost.sync_global_processes(f"titanax_io_save_{self._saves}")
        if moved or process_count() > 1:
            self._manager.reload()

    def wait(self) -> None:
        """Blocks until the save in flight is complete.

        Raises:
          CheckpointSaveError: that save failed (the error is raised once).
        """
        self._check_open("wait")
        self._finish_pending("wait")

    def close(self) -> None:
        """Waits for the save in flight, then releases Orbax's threads; idempotent.

        Raises:
          CheckpointSaveError: the save in flight failed (resources are released anyway).
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._finish_pending("close")
        finally:
            self._manager.close()

    def __enter__(self) -> OrbaxCheckpointer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- restoring -----------------------------------------------------------------------------

    def _resolve_step(self, api: str, step: int | None) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(
                    f"{api}: no complete checkpoint in {self._directory}"
                    + self._uncommitted_note()
                    + ". Check the directory, or start from scratch."
                )
            return steps[-1]
        step = _check_step(api, step)
        if step not in steps:
            raise CheckpointError(
                f"{api}: step {step} is not a complete checkpoint in {self._directory}; "
                f"complete steps: {steps}{self._uncommitted_note()}."
            )
        return step

    def _uncommitted_note(self) -> str:
        skipped = uncommitted_entries(self._directory)
        return f" (skipped incomplete entries: {skipped})" if skipped else ""

    def saved_tree(self, step: int | None = None) -> dict[str, LeafSpec]:
        """``{path: (shape, dtype name)}`` of the state saved at ``step`` (latest if ``None``).

        Reads Orbax's tree metadata only, no array data.

        Raises:
          CheckpointError: no such complete step, or its metadata files are damaged.
        """
        self._check_open("saved_tree")
        step = self._resolve_step("OrbaxCheckpointer.saved_tree", step)
        return saved_leaf_specs(self._state_metadata_tree("OrbaxCheckpointer.saved_tree", step))

    def _state_metadata_tree(self, api: str, step: int) -> Any:
        try:
            item = self._manager.metadata(step).item_metadata
            tree = None if item is None or item.get(_STATE) is None else item[_STATE].tree
        except Exception as err:
            raise damaged_step_error(
                api, self._directory / str(step), "its array metadata cannot be read", err
            ) from err
        if tree is None:
            raise damaged_step_error(
                api, self._directory / str(step), f"it has no readable '{_STATE}' item"
            )
        return tree

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        """The JSON metadata of ``step`` (latest complete step if ``None``), no array data.

        Raises:
          CheckpointError: no such complete step, or its metadata is damaged (not valid JSON,
            not a JSON object, or missing).
        """
        self._check_open("metadata")
        step = self._resolve_step("OrbaxCheckpointer.metadata", step)
        return self._read_meta("OrbaxCheckpointer.metadata", step)

    def restore(
        self,
        step: int | None,
        target: Any,
        *,
        partial: Sequence[str] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Restores ``step`` (the latest complete one when ``None``) into ``target``'s layout.

        Before any array is read, the saved tree — the layout recorded in the step's JSON
        metadata at save time (Orbax's tree metadata for checkpoints written otherwise) — is
        compared with ``target``: by default every path must exist on both sides with the same
        shape and dtype. With ``partial``, only target leaves whose path matches one of the
        globs are read (those must match the checkpoint); the other target leaves are returned
        as given and saved leaves outside the globs are ignored — both lists are logged at
        WARNING.

        Args:
          step: a complete step, or ``None`` for the latest.
          target: pytree with the structure to restore into. Every leaf is a
            ``jax.ShapeDtypeStruct`` or ``jax.Array`` whose ``sharding`` (e.g. a
            ``NamedSharding`` on the current mesh, ``P()`` for scalars and replicated leaves)
            is the layout the restored array gets. Paths are the leaves' key paths joined with
            ``"/"`` (``"params/blocks/0/attn/q/kernel"``, ``"opt_state/0/mu/..."``).
          partial: ``fnmatch`` globs (``*`` crosses ``/``), e.g. ``("params/*",)`` to load only
            the parameters into a fresh state. Leaves outside the globs should be concrete
            arrays in ``target`` (they are returned unchanged).

        Returns:
          ``(state, metadata)``: ``state`` with ``target``'s structure and shardings;
          ``metadata`` the JSON saved with the step (the caller's keys plus ``step``,
          ``wall_time``, ``versions``, ``tree``, ``format_version``).

        Raises:
          CheckpointError: no such complete step; a target leaf without shape, dtype or
            sharding; a tree mismatch (the message lists missing and unexpected paths and
            shape/dtype changes, checkpoint vs target); a glob of ``partial`` that matches no
            target path; a damaged step (array or metadata files deleted, truncated or
            overwritten since the commit) — the message names the step directory and what
            could not be read.
          CheckpointSaveError: a save in flight failed.
        """
        api = f"OrbaxCheckpointer.restore(step={step})"
        self._check_open("restore")
        self._finish_pending("restore")
        step = self._resolve_step(api, step)
        api = f"OrbaxCheckpointer.restore(step={step})"
        abstract = abstract_target(api, target)
        flat_abstract = flat_with_paths(abstract)
        meta = self._read_meta(api, step)
        if partial is not None:
            meta_tree = self._state_metadata_tree(api, step)
            from_orbax = saved_leaf_specs(meta_tree)
            state = self._restore_partial(
                api, step, target, flat_abstract, meta_tree, from_orbax, partial
            )
            return state, meta
        recorded = recorded_tree(meta)
        # A checkpoint not written by OrbaxCheckpointer has no recorded tree: ask Orbax (slower,
        # it reads every array's metadata).
        saved = (
            recorded
            if recorded is not None
            else saved_leaf_specs(self._state_metadata_tree(api, step))
        )
        wanted = {path: leaf_spec(leaf) for path, leaf in flat_abstract}
        diff = diff_trees(saved, wanted)
        if diff:
            raise CheckpointError(
                f"{api} from {self._directory}: the checkpoint does not match the target "
                "tree (restores are strict):\n"
                + "\n".join(diff.lines())
                + "\nBuild the target like the saved state (same model and optimizer), or "
                'restore a subset with partial=("params/*", ...).'
            )
        ocp = orbax_checkpoint()
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract)})
            )
        except Exception as err:
            raise damaged_step_error(
                api, self._directory / str(step), "its arrays cannot be read", err
            ) from err
        return restored[_STATE], meta

    def _read_meta(self, api: str, step: int) -> dict[str, Any]:
        step_dir = self._directory / str(step)
        meta_file = step_dir / _META / "metadata"
        if not meta_file.is_file():
            raise damaged_step_error(api, step_dir, f"its metadata file {meta_file} is missing")
        ocp = orbax_checkpoint()
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
            )
            meta = restored[_META]
        except Exception as err:
            raise damaged_step_error(
                api, step_dir, f"its metadata file {meta_file} is not valid JSON", err
            ) from err
        if not isinstance(meta, Mapping):
            raise damaged_step_error(
                api,
                step_dir,
                f"its metadata file {meta_file} holds a JSON {type(meta).__name__}, not an object",
            )
        return dict(meta)

    def _restore_partial(
        self,
        api: str,
        step: int,
        target: Any,
        flat_abstract: list[tuple[str, Any]],
        meta_tree: Any,
        saved: Mapping[str, LeafSpec],
        partial: Sequence[str],
    ) -> Any:
        if isinstance(partial, str) or not all(isinstance(g, str) for g in partial):
            raise CheckpointError(
                f"{api}: partial={partial!r} must be a sequence of glob strings such as "
                '("params/*",).'
            )
        globs = tuple(partial)
        paths = [p for p, _ in flat_abstract]
        unused = [g for g in globs if not any(matches_any(p, (g,)) for p in paths)]
        if not globs or unused:
            raise CheckpointError(
                f"{api}: partial globs {list(unused) or list(globs)} match no target path "
                f"(target paths start with {sorted({p.split('/')[0] for p in paths})}). "
                "Fix the globs; fnmatch rules apply and '*' crosses '/'."
            )
        chosen = {p: leaf for p, leaf in flat_abstract if matches_any(p, globs)}
        wanted = {p: leaf_spec(leaf) for p, leaf in chosen.items()}
        diff = diff_trees({p: s for p, s in saved.items() if p in chosen}, wanted)
        if diff:
            raise CheckpointError(
                f"{api} from {self._directory}, partial={list(globs)}: the selected paths do "
                "not match the checkpoint:\n" + "\n".join(diff.lines())
            )
        kept = [p for p in paths if p not in chosen]
        ignored = [p for p in saved if p not in chosen]
        logger.warning(
            "%s partial=%s: restoring %d leaves; %d target leaves kept as given %s; %d saved "
            "leaves not restored %s",
            api,
            list(globs),
            len(chosen),
            len(kept),
            kept[:50],
            len(ignored),
            ignored[:50],
        )

        ocp = orbax_checkpoint()

        def item_leaf(key_path: Any, leaf: Any) -> Any:
            return chosen.get(path_str(key_path), ocp.PLACEHOLDER)

        item = jax.tree_util.tree_map_with_path(item_leaf, meta_tree)
        restore_args = jax.tree.map(
            lambda x: (
                ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype)
                if isinstance(x, jax.ShapeDtypeStruct)
                else ocp.PLACEHOLDER
            ),
            item,
        )
        state_dir = self._directory / str(step) / _STATE
        try:
            with ocp.PyTreeCheckpointer() as reader:
                loaded = reader.restore(
                    state_dir, args=ocp.args.PyTreeRestore(item, restore_args=restore_args)
                )
        except Exception as err:
            raise damaged_step_error(
                api, self._directory / str(step), "its arrays cannot be read", err
            ) from err
        by_path = dict(flat_with_paths(loaded))
        leaves, treedef = jax.tree_util.tree_flatten(target)
        new_leaves = [
            by_path[p] if p in chosen else leaf
            for (p, _), leaf in zip(flat_abstract, leaves, strict=True)
        ]
        return jax.tree_util.tree_unflatten(treedef, new_leaves)
