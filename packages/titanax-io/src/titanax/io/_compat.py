"""Checking a checkpoint's metadata against the run that wants to restore it.

A checkpoint records the mesh, the plan (and its fingerprint), the optimizer fingerprint and the
tree layout it was saved with. Restoring onto another mesh or plan is a *reshard* — fine, the
arrays load straight into the new layout. A different optimizer, or parameters of another
shape or dtype, are *incompatible*: the saved values do not mean what the new run expects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Literal, Protocol, TypeGuard, runtime_checkable

import jax

from titanax.io._errors import CheckpointError
from titanax.io._metadata import FORMAT_VERSION, library_versions
from titanax.io._paths import flat_with_paths, format_shape
from titanax.io._tree_diff import diff_trees, leaf_spec, recorded_tree
from titanax.mesh import MeshSpec

__all__ = ["Change", "CompatibilityReport", "validate_checkpoint_compatibility"]

ChangeKind = Literal["reshard", "incompatible", "info"]


@runtime_checkable
class _PlanLike(Protocol):
    def to_dict(self) -> dict[str, Any]: ...

    def fingerprint(self) -> str: ...


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """One difference between the saved run and the current one.

    Attributes:
      field: what changed: ``"mesh.shape"``, ``"mesh.devices"``, ``"plan.tensor_parallel"``,
        ``"optimizer_fingerprint"``, ``"tree/params/w"``, ``"versions.jax"`` ...
      saved: the value recorded in the checkpoint (JSON).
      current: the value of this run.
      kind: ``"reshard"`` (layout change; arrays load into the new layout), ``"incompatible"``
        (restoring would give wrong or no values) or ``"info"`` (recorded only).
      note: one sentence on what it means or how to fix it.
    """

    field: str
    saved: Any
    current: Any
    kind: ChangeKind
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("reshard", "incompatible", "info"):
            raise CheckpointError(
                f"Change(field={self.field!r}): kind={self.kind!r} must be 'reshard', "
                "'incompatible' or 'info'."
            )

    def line(self) -> str:
        """``"[reshard] mesh.shape: [2, 4] -> [4, 1]"`` plus the note."""
        text = f"[{self.kind}] {self.field}: {_show(self.saved)} -> {_show(self.current)}"
        return f"{text} ({self.note})" if self.note else text


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CompatibilityReport:
    """What differs between a checkpoint and the current run, and whether it can be restored.

    Attributes:
      step: the checkpoint's step (from its metadata), or ``None``.
      changes: every difference found, in the order mesh, plan, optimizer, tree, versions.
    """

    step: int | None
    changes: tuple[Change, ...]

    @property
    def compatible(self) -> bool:
        """No incompatible change: the checkpoint restores into this run."""
        return not self.incompatible

    @property
    def is_reshard(self) -> bool:
        """Compatible, and the mesh or plan changed (arrays load into a new layout)."""
        return self.compatible and any(c.kind == "reshard" for c in self.changes)

    @property
    def incompatible(self) -> tuple[Change, ...]:
        """The changes that make a restore wrong."""
        return tuple(c for c in self.changes if c.kind == "incompatible")

    @property
    def fields(self) -> tuple[str, ...]:
        """The ``field`` of every change."""
        return tuple(c.field for c in self.changes)

    def summary(self) -> str:
        """A readable multi-line account: the verdict, then one line per change."""
        if not self.changes:
            verdict = "identical layout: plain restore"
        elif not self.compatible:
            verdict = f"INCOMPATIBLE ({len(self.incompatible)} blocking change(s))"
        elif self.is_reshard:
            verdict = "compatible: reshard onto the current mesh/plan"
        else:
            verdict = "compatible: same layout"
        head = f"checkpoint step {self.step}: {verdict}"
        return "\n".join([head, *(f"  {c.line()}" for c in self.changes)])

    def __str__(self) -> str:
        return self.summary()

    def raise_if_incompatible(self) -> None:
        """Raises :class:`~titanax.io.CheckpointError` naming every incompatible field.

        Raises:
          CheckpointError: the report has incompatible changes.
        """
        if self.compatible:
            return
        lines = "\n".join(f"- {c.line()}" for c in self.incompatible)
        raise CheckpointError(
            f"validate_checkpoint_compatibility: checkpoint step {self.step} cannot be restored "
            f"into this run; incompatible fields: {[c.field for c in self.incompatible]}\n"
            f"{lines}\nRestore into a run with the saved optimizer and parameter shapes, or "
            "load a subset with OrbaxCheckpointer.restore(..., partial=('params/*',)) and "
            "initialize the rest."
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_list(value: Any) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(_is_int(v) for v in value)


def _str_list(value: Any) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _field_problems(metadata: Mapping[str, Any]) -> list[str]:
    """One ``"field: expected ..., got ..."`` line per recorded field of the wrong type.

    A field that is absent (or ``None``) is "not recorded" — checkpoints written by plain Orbax
    have none — but one that is present must have the type :class:`OrbaxCheckpointer` writes.
    """
    out: list[str] = []

    def bad(field: str, expected: str, value: Any) -> None:
        text = _show(value)
        out.append(f"{field}: expected {expected}, got {type(value).__name__} {text}")

    for field in ("step", "format_version"):
        value = metadata.get(field)
        if value is not None and not (_is_int(value) and value >= 0):
            bad(field, "a non-negative int", value)
    for field in ("plan_fingerprint", "optimizer_fingerprint"):
        value = metadata.get(field)
        if value is not None and not isinstance(value, str):
            bad(field, "a string", value)
    for field in ("plan", "versions"):
        value = metadata.get(field)
        if value is not None and not isinstance(value, Mapping):
            bad(field, "a JSON object", value)
    mesh = metadata.get("mesh")
    if mesh is not None:
        if not isinstance(mesh, Mapping):
            bad("mesh", "a JSON object (MeshSpec.to_dict())", mesh)
        else:
            for key, check, expected in (
                ("axes", _str_list, "a list of axis names"),
                ("shape", _int_list, "a list of ints"),
            ):
                if key not in mesh:
                    out.append(f"mesh.{key}: missing (expected {expected})")
                elif not check(mesh[key]):
                    bad(f"mesh.{key}", expected, mesh[key])
            axes, shape = mesh.get("axes"), mesh.get("shape")
            if _str_list(axes) and _int_list(shape) and len(axes) != len(shape):
                out.append(
                    f"mesh.shape: {shape} has {len(shape)} entries for {len(axes)} axes {axes}"
                )
    tree = metadata.get("tree")
    if tree is not None:
        if not isinstance(tree, Mapping):
            bad("tree", "a JSON object {path: {shape, dtype}}", tree)
        else:
            for path, leaf in tree.items():
                where = f"tree/{path}"
                if not isinstance(leaf, Mapping):
                    bad(where, 'an object {"shape": [...], "dtype": "..."}', leaf)
                    continue
                shape, dtype = leaf.get("shape"), leaf.get("dtype")
                if "shape" not in leaf or "dtype" not in leaf:
                    missing = [k for k in ("shape", "dtype") if k not in leaf]
                    out.append(f"{where}: missing {missing}")
                elif not (_int_list(shape) and all(d >= 0 for d in shape)):
                    bad(f"{where}.shape", "a list of non-negative ints", shape)
                elif not isinstance(dtype, str):
                    bad(f"{where}.dtype", "a dtype name such as 'float32'", dtype)
    return out


def _mesh_dict(mesh: Any) -> dict[str, Any]:
    if isinstance(mesh, jax.sharding.Mesh):
        return dict(MeshSpec.from_mesh(mesh).to_dict())
    if isinstance(mesh, MeshSpec):
        if -1 in mesh.shape:
            mesh = mesh.resolve()
        return dict(mesh.to_dict())
    if isinstance(mesh, Mapping):
        return dict(mesh)
    raise CheckpointError(
        f"validate_checkpoint_compatibility: mesh must be a jax.sharding.Mesh, a MeshSpec or "
        f"MeshSpec.to_dict(), got {type(mesh).__name__}."
    )


def _device_count(mesh: Mapping[str, Any]) -> int | None:
    devices = mesh.get("devices")
    if isinstance(devices, int) and not isinstance(devices, bool):
        return devices
    if isinstance(devices, list):
        return len(devices)
    shape = mesh.get("shape")
    if isinstance(shape, list) and shape and all(isinstance(s, int) and s > 0 for s in shape):
        return math.prod(shape)
    return None


def _mesh_changes(saved: Any, current: Any) -> list[Change]:
    if current is None:
        return []
    now = _mesh_dict(current)
    if not isinstance(saved, Mapping):
        return [Change(field="mesh", saved=None, current=now, kind="info", note="not recorded")]
    out = []
    for key in ("axes", "shape", "axis_types"):
        if saved.get(key) != now.get(key):
            out.append(
                Change(
                    field=f"mesh.{key}",
                    saved=saved.get(key),
                    current=now.get(key),
                    kind="reshard",
                    note="arrays load into the new layout",
                )
            )
    before, after = _device_count(saved), _device_count(now)
    if before != after:
        out.append(
            Change(
                field="mesh.devices",
                saved=before,
                current=after,
                kind="reshard",
                note="device count changed",
            )
        )
    return out


def canonical_fingerprint(data: Any) -> str:
    """sha256 hex of ``data`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _plan_changes(meta: Mapping[str, Any], plan: Any) -> list[Change]:
    if plan is None:
        return []
    if isinstance(plan, _PlanLike):
        now, fingerprint = plan.to_dict(), plan.fingerprint()
    elif isinstance(plan, Mapping):
        now, fingerprint = dict(plan), None
    else:
        raise CheckpointError(
            "validate_checkpoint_compatibility: plan must be a titanax.sharding.Plan (anything "
            f"with to_dict() and fingerprint()) or Plan.to_dict(), got {type(plan).__name__}."
        )
    saved = meta.get("plan")
    saved_fp = meta.get("plan_fingerprint")
    if not isinstance(saved, Mapping):
        return [Change(field="plan", saved=None, current=now, kind="info", note="not recorded")]
    same = (
        saved_fp == fingerprint
        if isinstance(saved_fp, str) and fingerprint is not None
        else canonical_fingerprint(dict(saved)) == canonical_fingerprint(now)
    )
    if same:
        return []
    out = []
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            out.append(
                Change(
                    field=f"plan.{key}",
                    saved=saved.get(key),
                    current=now.get(key),
                    kind="reshard",
                    note="arrays load into the new layout",
                )
            )
    if not out:
        out.append(
            Change(
                field="plan_fingerprint",
                saved=saved_fp,
                current=fingerprint,
                kind="reshard",
                note="plan changed",
            )
        )
    return out


def _tree_changes(metadata: Mapping[str, Any], target: Any) -> list[Change]:
    if target is None:
        return []
    saved = recorded_tree(metadata)
    if saved is None:
        return [
            Change(
                field="tree",
                saved=None,
                current="target given",
                kind="info",
                note="layout not recorded; the strict restore still checks it",
            )
        ]
    wanted = {p: leaf_spec(leaf) for p, leaf in flat_with_paths(target)}
    diff = diff_trees(saved, wanted)
    out = []
    for path, shape, dtype in diff.missing:
        out.append(
            Change(
                field=f"tree/{path}",
                saved=None,
                current=f"{format_shape(shape)} {dtype}",
                kind="incompatible",
                note="not in the checkpoint",
            )
        )
    for path, shape, dtype in diff.unexpected:
        out.append(
            Change(
                field=f"tree/{path}",
                saved=f"{format_shape(shape)} {dtype}",
                current=None,
                kind="incompatible",
                note="not in the current state",
            )
        )
    for path, before, after in diff.shape_changes:
        out.append(
            Change(
                field=f"tree/{path}",
                saved=format_shape(before),
                current=format_shape(after),
                kind="incompatible",
                note="parameter shape changed",
            )
        )
    for path, before_dt, after_dt in diff.dtype_changes:
        out.append(
            Change(
                field=f"tree/{path}",
                saved=before_dt,
                current=after_dt,
                kind="incompatible",
                note="dtype changed",
            )
        )
    return out


def validate_checkpoint_compatibility(
    metadata: Mapping[str, Any],
    mesh: Any,
    plan: Any,
    *,
    optimizer_fingerprint: str | None = None,
    target: Any = None,
    raise_on_incompatible: bool = True,
) -> CompatibilityReport:
    """Says what changed between a checkpoint and this run, and whether it can be restored.

    Compares the checkpoint's metadata (from :meth:`OrbaxCheckpointer.metadata`,
    :meth:`OrbaxCheckpointer.restore` or :func:`inspect_checkpoint`) with the current run:

    * mesh axes, shape, axis types and device count — **reshard** (fine);
    * every top-level field of the plan (DP / FSDP / TP / PP / rules) — **reshard** (fine:
      a pipeline split maps across stage counts through the stacked-layer layout);
    * the optimizer fingerprint — **incompatible** when both are known and differ;
    * with ``target``, every leaf path, shape and dtype against the recorded tree —
      **incompatible** on any difference;
    * the metadata format version — **incompatible** when newer than this library reads;
    * library versions — **info**.

    Args:
      metadata: the checkpoint's JSON metadata.
      mesh: the current ``jax.sharding.Mesh``, ``MeshSpec`` or ``MeshSpec.to_dict()``; ``None``
        skips the mesh.
      plan: the current ``titanax.sharding.Plan`` (or its ``to_dict()``); ``None`` skips it.
      optimizer_fingerprint: the current optimizer's fingerprint (the same function that
        produced the saved ``optimizer_fingerprint``).
      target: the abstract state to restore into (any pytree of arrays or
        ``jax.ShapeDtypeStruct``).
      raise_on_incompatible: raise instead of returning an incompatible report.

    Returns:
      The :class:`CompatibilityReport`; ``report.summary()`` reads well in logs.

    Raises:
      CheckpointError: ``raise_on_incompatible`` and an incompatible change — the message names
        each field (``optimizer_fingerprint``, ``tree/params/w``, ...) with both values; an
        argument of the wrong type; or garbage metadata: not a mapping, or a recorded field
        of the wrong type or shape (``step``, ``format_version``, ``mesh.axes``,
        ``mesh.shape``, ``plan``, ``plan_fingerprint``, ``optimizer_fingerprint``,
        ``tree/<path>.shape``, ``versions`` ...) — every such field is named with what it
        should be and what it is. Absent fields are not errors: they are reported as
        ``"info"`` changes ("not recorded").
    """
    if not isinstance(metadata, Mapping):
        raise CheckpointError(
            "validate_checkpoint_compatibility: metadata must be the checkpoint's JSON mapping "
            f"(OrbaxCheckpointer.metadata()), got {type(metadata).__name__}."
        )
    non_str = [k for k in metadata if not isinstance(k, str)]
    problems = (
        [f"keys {non_str!r}: JSON object keys are strings"] if non_str else []
    ) + _field_problems(metadata)
    if problems:
        raise CheckpointError(
            f"validate_checkpoint_compatibility: the checkpoint metadata (step "
            f"{metadata.get('step')!r}) is malformed; {len(problems)} field(s) cannot be "
            "checked:\n"
            + "\n".join(f"- {p}" for p in problems[:40])
            + "\nPass the metadata OrbaxCheckpointer wrote (ckpt.metadata(step)); if the file "
            "was edited or damaged, restore another step."
        )
    changes: list[Change] = []
    changes += _mesh_changes(metadata.get("mesh"), mesh)
    changes += _plan_changes(metadata, plan)
    saved_opt = metadata.get("optimizer_fingerprint")
    if optimizer_fingerprint is not None and saved_opt is not None:
        if saved_opt != optimizer_fingerprint:
            changes.append(
                Change(
                    field="optimizer_fingerprint",
                    saved=saved_opt,
                    current=optimizer_fingerprint,
                    kind="incompatible",
                    note="the optimizer changed; its saved state does not fit the new one",
                )
            )
    elif optimizer_fingerprint is not None:
        changes.append(
            Change(
                field="optimizer_fingerprint",
                saved=None,
                current=optimizer_fingerprint,
                kind="info",
                note="not recorded",
            )
        )
    changes += _tree_changes(metadata, target)
    version = metadata.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        changes.append(
            Change(
                field="format_version",
                saved=version,
                current=FORMAT_VERSION,
                kind="incompatible",
                note="written by a newer titanax-io; upgrade titanax-io",
            )
        )
    saved_versions = metadata.get("versions")
    if isinstance(saved_versions, Mapping):
        for name, now in library_versions().items():
            before = saved_versions.get(name)
            if before is not None and before != now:
                changes.append(
                    Change(field=f"versions.{name}", saved=before, current=now, kind="info")
                )
    step = metadata.get("step")
    report = CompatibilityReport(
        step=step if isinstance(step, int) else None, changes=tuple(changes)
    )
    if raise_on_incompatible:
        report.raise_if_incompatible()
    return report
