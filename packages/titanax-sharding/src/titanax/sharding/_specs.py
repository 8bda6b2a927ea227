"""PartitionSpec normalization, formatting and validation against a leaf's shape and a mesh."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeAlias

import jax
from jax.sharding import PartitionSpec

from titanax.mesh import MeshSpec
from titanax.sharding._errors import ShardingError

__all__ = [
    "Entry",
    "Indivisible",
    "SpecLike",
    "check_spec",
    "entry_axes",
    "format_spec",
    "mesh_sizes",
    "raise_problems",
    "spec_axes",
    "to_spec",
]

logger = logging.getLogger("titanax.sharding")

SpecLike: TypeAlias = PartitionSpec | tuple[Any, ...] | list[Any] | None
"""A ``PartitionSpec``, or a tuple/list of entries as written in YAML (``[null, "tensor"]``);
each entry is ``None``, an axis name, or a tuple/list of axis names (a dim over several axes)."""

Entry: TypeAlias = str | tuple[str, ...] | None
Indivisible: TypeAlias = Literal["raise", "replicate"]


def _entry(value: Any, *, what: str) -> Entry:
    if value is None:
        return None
    if isinstance(value, str):
        if not value:
            raise ShardingError(f"{what}: an axis name is the empty string; use None to replicate.")
        return value
    if isinstance(value, tuple | list):
        names = list(value)
        if not all(isinstance(n, str) and n for n in names):
            raise ShardingError(
                f"{what}: entry {value!r} must be a tuple of axis names such as "
                "('data', 'fsdp'), an axis name, or None."
            )
        if not names:
            return None
        return names[0] if len(names) == 1 else tuple(names)
    raise ShardingError(
        f"{what}: spec entry {value!r} is not None, an axis name, or a tuple of axis names. "
        "Write PartitionSpec(None, 'tensor') or, in YAML, [null, tensor]."
    )


def to_spec(value: SpecLike, *, what: str = "Rules") -> PartitionSpec:
    """Normalizes a spec-like value to a ``PartitionSpec`` with canonical entries.

    One-name tuples become the name (``("data",)`` -> ``"data"``), empty tuples become ``None``;
    ``None`` as the whole value means ``P()`` (replicated).

    Raises:
      ShardingError: a bare string (ambiguous: write ``P("tensor")`` or ``["tensor"]``), an entry
        that is not ``None``/a name/a tuple of names (``P.UNCONSTRAINED`` included).
    """
    if value is None:
        return PartitionSpec()
    if isinstance(value, str):
        raise ShardingError(
            f"{what}: spec {value!r} is a bare string; write PartitionSpec({value!r}) (or "
            f"[{value!r}] in YAML) to shard dim 0, or PartitionSpec(None, {value!r}) for dim 1."
        )
    if isinstance(value, PartitionSpec | tuple | list):
        raw = list(value)
    else:
        raise ShardingError(
            f"{what}: spec {value!r} is not a PartitionSpec, tuple or list of entries."
        )
    return PartitionSpec(*(_entry(v, what=what) for v in raw))


def entry_axes(entry: Any) -> tuple[str, ...]:
    """Axis names of one spec entry (``None`` -> ``()``)."""
    if entry is None:
        return ()
    if isinstance(entry, str):
        return (entry,)
    return tuple(entry)


def spec_axes(spec: PartitionSpec) -> tuple[str, ...]:
    """Every axis name a spec mentions, in order (repeats kept)."""
    return tuple(a for e in spec for a in entry_axes(e))


def _format_entry(entry: Any) -> str:
    if entry is None:
        return "None"
    if isinstance(entry, str):
        return repr(entry)
    return "(" + ", ".join(repr(a) for a in entry) + ("," if len(entry) == 1 else "") + ")"


def format_spec(spec: PartitionSpec) -> str:
    """``P(None, 'tensor')``-style text for messages and tables."""
    return "P(" + ", ".join(_format_entry(e) for e in spec) + ")"


def mesh_sizes(mesh: Any) -> dict[str, int]:
    """``{axis: size}`` of a ``jax.sharding.Mesh``, ``AbstractMesh`` or ``MeshSpec`` (resolved
    on the visible devices), in mesh order.

    Raises:
      ShardingError: ``mesh`` is none of these.
    """
    if isinstance(mesh, MeshSpec):
        spec = mesh.resolve()
        return {a: int(s) for a, s in zip(spec.axes, spec.shape, strict=True)}
    shape = getattr(mesh, "shape", None)
    if not isinstance(shape, Mapping):
        raise ShardingError(
            f"expected a mesh (jax.sharding.Mesh or titanax.mesh.MeshSpec), got "
            f"{type(mesh).__name__} {mesh!r}; build one with MeshSpec(axes=..., shape=...).build()."
        )
    return {str(k): int(v) for k, v in dict(shape).items()}


def _mesh_text(sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sizes.items())


def _axes_text(names: Sequence[str], sizes: Mapping[str, int]) -> str:
    if len(names) == 1:
        return f"mesh axis {names[0]!r} of size {sizes[names[0]]}"
    parts = "×".join(str(sizes[n]) for n in names)
    total = math.prod(sizes[n] for n in names)
    return f"mesh axes {tuple(names)!r} of sizes {parts} = {total}"


def check_spec(
    spec: PartitionSpec,
    *,
    api: str,
    path: str,
    shape: tuple[int, ...],
    origin: str,
    sizes: Mapping[str, int] | None,
    indivisible: Indivisible = "raise",
) -> tuple[PartitionSpec, list[str]]:
    """Checks ``spec`` for a leaf; returns the spec to use and the problems found.

    ``origin`` says where the spec came from (``"rule 'blocks/*/mlp/up/kernel'"``). Without
    ``sizes`` (no mesh) only the rank and repeated axes are checked. With
    ``indivisible="replicate"`` an indivisible dim is replicated and one warning is logged for the
    path instead of a problem.
    """
    where = f"{api}: path {path!r} with shape {shape}"
    if len(spec) > len(shape):
        return spec, [
            f"{where} has rank {len(shape)}, but spec {format_spec(spec)} from {origin} has "
            f"{len(spec)} entries. Fix: give at most {len(shape)} entries (one per dim), or "
            f"narrow the rule so it does not match {path!r}."
        ]
    problems: list[str] = []
    seen: dict[str, int] = {}
    for dim, entry in enumerate(spec):
        for name in entry_axes(entry):
            if name in seen:
                size = f" (size {sizes[name]})" if sizes is not None and name in sizes else ""
                dims = f"dims {seen[name]} and {dim}" if seen[name] != dim else f"dim {dim} twice"
                problems.append(
                    f"{where}: mesh axis {name!r}{size} is used by {dims} of spec "
                    f"{format_spec(spec)} from {origin}; a mesh axis can shard at most one dim, "
                    "once. Fix: drop the repeated axis from the spec."
                )
            else:
                seen[name] = dim
    if sizes is None:
        return spec, problems
    unknown = [n for n in seen if n not in sizes]
    for name in unknown:
        problems.append(
            f"{where}: dim {seen[name]} uses mesh axis {name!r}, which is not in the mesh "
            f"({_mesh_text(sizes)}); spec {format_spec(spec)} from {origin}. Fix: spell the axis "
            "as in the MeshSpec, or add it to the mesh."
        )
    if problems:
        return spec, problems
    entries = list(spec)
    replicated: list[str] = []
    for dim, entry in enumerate(spec):
        names = entry_axes(entry)
        if not names:
            continue
        total = math.prod(sizes[n] for n in names)
        if shape[dim] % total == 0:
            continue
        if indivisible == "replicate":
            entries[dim] = None
            replicated.append(f"dim {dim} (size {shape[dim]}, {_axes_text(names, sizes)})")
            continue
        problems.append(
            f"{where}: dim {dim} has size {shape[dim]}, not divisible by "
            f"{_axes_text(names, sizes)} (spec {format_spec(spec)} from {origin}). Fix: make dim "
            f"{dim} a multiple of {total}, use a rule that leaves dim {dim} unsharded or shards "
            "another dim, or pass indivisible='replicate' to replicate it with a warning."
        )
    if replicated:
        logger.warning(
            "%s: replicating %s because it does not divide over the mesh (spec %s from %s); "
            "indivisible='replicate' is in force.",
            where,
            " and ".join(replicated),
            format_spec(spec),
            origin,
        )
        return PartitionSpec(*entries), problems
    return spec, problems


def raise_problems(api: str, problems: Sequence[str], *, context: str = "") -> None:
    """Raises one ShardingError listing every problem (one per line), if there are any."""
    if not problems:
        return
    unique = list(dict.fromkeys(problems))
    if len(unique) == 1:
        raise ShardingError(unique[0])
    head = f"{api} found {len(unique)} problems{context}:"
    raise ShardingError(head + "\n" + "\n".join(f"  - {p}" for p in unique))


def is_explicit(mesh: Any, axis: str) -> bool:
    """Whether ``axis`` of ``mesh`` is an Explicit axis (``jax.sharding.AxisType.Explicit``)."""
    types = getattr(mesh, "axis_types", None)
    if not types:
        return False
    names = list(mesh.axis_names)
    return bool(types[names.index(axis)] == jax.sharding.AxisType.Explicit)
