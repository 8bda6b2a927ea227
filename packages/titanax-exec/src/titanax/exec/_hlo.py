"""Reading a compiled SPMD program: its collectives per mesh axis, memory and FLOPs.

The collectives come from the optimized HLO text (``Compiled.as_text()``): every
``all-reduce``, ``all-gather``, ``reduce-scatter``, ``all-to-all`` and ``collective-permute``
(or their ``-start`` halves) with the bytes of its result (tuples summed — XLA combines
collectives) and its replica groups mapped back to mesh axis names through the mesh's device
order. Memory comes from ``Compiled.memory_analysis()``, FLOPs from ``cost_analysis()``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

__all__ = ["Collective", "CompileReport", "parse_collectives"]

_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
}  # fmt: skip
_OP = re.compile(
    r"=\s*(?P<shape>\(.*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+"
    r"(?P<kind>all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)"
    r"(?P<start>-start)?\("
)
_ARRAY = re.compile(r"([a-z0-9]+)\[([0-9,]*)\]")
_NAMED = re.compile(
    r"replica_groups=mesh\[(?P<mesh>[^\]]*)\]"
    r"(?:,\s*device_ids=\(\[(?P<iota>[0-9,]+)\](?:T\((?P<perm>[0-9,]+)\))?\))?"
    r"\s*\{(?P<axes>[^}]*)\}"
)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Collective:
    """One collective of a compiled program.

    Attributes:
      kind: ``"all-reduce"``, ``"all-gather"``, ``"reduce-scatter"``, ``"all-to-all"`` or
        ``"collective-permute"``.
      bytes: bytes of its result per device (sum over tuple elements).
      axes: mesh axes its groups span (``()`` when they could not be mapped, e.g. a group of 1).
      group_size: devices per group.
    """

    kind: str
    bytes: int
    axes: tuple[str, ...]
    group_size: int


def _shape_bytes(shape_text: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(shape_text):
        if dtype not in _BYTES:
            continue
        size = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        total += size * _BYTES[dtype]
    return total


def _braced_groups(text: str) -> list[list[int]]:
    return [
        [int(v) for v in g.split(",") if v.strip()] for g in re.findall(r"\{([0-9,\s]*)\}", text)
    ]


def _groups(line: str, kind: str) -> list[list[int]]:
    if kind == "collective-permute":
        match = re.search(r"source_target_pairs=\{(.*?)\}\}", line)
        return _braced_groups(match.group(1) + "}") if match else []
    match = re.search(r"replica_groups=\{(\{.*?\})\}", line)
    if match:
        return _braced_groups(match.group(1))
    named = _NAMED.search(line)
    if named:
        # mesh['axis_0'=4,'axis_1'=2] {'axis_0'}: devices iota over that shape, grouped along
        # the listed axes. Newer XLA puts the device order in between:
        # mesh['axis_0'=1,'axis_1'=2,'axis_2'=4], device_ids=([4,2]T(1,0)) {'axis_1'}.
        dims = re.findall(r"'([^']+)'=(\d+)", named.group("mesh"))
        names = [n for n, _ in dims]
        sizes = [int(v) for _, v in dims]
        listed = [names.index(n) for n in re.findall(r"'([^']+)'", named.group("axes"))]
        rest = [i for i in range(len(sizes)) if i not in listed]
        ids = np.arange(math.prod(sizes))
        if named.group("iota"):
            order = [int(d) for d in named.group("iota").split(",")]
            if math.prod(order) != ids.size:
                return []
            ids = ids.reshape(order)
            if named.group("perm"):
                ids = ids.transpose([int(d) for d in named.group("perm").split(",")])
        ids = ids.reshape(sizes).transpose(rest + listed)
        size = math.prod(sizes[i] for i in listed)
        groups_list: list[list[int]] = ids.reshape(-1, size).tolist()
        return groups_list
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?", line)
    if iota:
        groups, size = int(iota.group(1)), int(iota.group(2))
        dims = [int(d) for d in iota.group(3).split(",")]
        ids = np.arange(math.prod(dims)).reshape(dims)
        if iota.group(4):
            ids = ids.transpose([int(p) for p in iota.group(4).split(",")])
        iota_groups: list[list[int]] = ids.reshape(groups, size).tolist()
        return iota_groups
    return []


def _axes_of(
    groups: Sequence[Sequence[int]], mesh_shape: tuple[int, ...], names: Sequence[str]
) -> tuple[str, ...]:
    size = math.prod(mesh_shape)
    varying: set[int] = set()
    for group in groups:
        ids = [g for g in group if 0 <= g < size]
        if len(ids) < 2:
            continue
        coords = np.array(np.unravel_index(ids, mesh_shape)).T
        varying.update(int(d) for d in np.nonzero((coords != coords[0]).any(axis=0))[0])
    return tuple(names[d] for d in sorted(varying))


def parse_collectives(hlo_text: str, mesh: jax.sharding.Mesh) -> list[Collective]:
    """Every collective in ``hlo_text`` with its result bytes and mesh axes.

    Args:
      hlo_text: optimized HLO of an SPMD program partitioned over ``mesh`` (one replica; device
        ids in replica groups are positions in ``mesh.devices.flat``).
      mesh: the mesh the program was compiled for.

    Returns:
      One :class:`Collective` per collective instruction (``-done`` halves are not counted).
    """
    shape = tuple(int(s) for s in mesh.devices.shape)
    names = tuple(str(a) for a in mesh.axis_names)
    found: list[Collective] = []
    for line in hlo_text.splitlines():
        match = _OP.search(line)
        if match is None:
            continue
        kind = match.group("kind")
        shape_text = match.group("shape")
        if match.group("start") and kind in ("all-gather", "collective-permute"):
            # these async starts return (operand, result, ...): count the result
            parts = _split_tuple(shape_text) if shape_text.startswith("(") else [shape_text]
            shape_text = parts[1] if len(parts) > 1 else parts[0]
        groups = _groups(line, kind)
        group_size = max((len(g) for g in groups), default=0)
        if kind == "collective-permute":
            group_size = 2 if groups else 0
        found.append(
            Collective(
                kind=kind,
                bytes=_shape_bytes(shape_text),
                axes=_axes_of(groups, shape, names),
                group_size=group_size,
            )
        )
    return found


def _split_tuple(text: str) -> list[str]:
    inner = text[1:-1]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    return [p.strip() for p in parts]


def _first(analysis: Any) -> Any:
    if isinstance(analysis, list | tuple):
        return analysis[0] if analysis else None
    return analysis


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompileReport:
    """What a dry run of a step tells before training: memory, FLOPs, communication.

    Attributes:
      argument_bytes, output_bytes, temp_bytes, generated_code_bytes: per device, from
        ``memory_analysis()`` (``None`` where the backend does not report them).
      alias_bytes: bytes of outputs aliased to donated inputs (not allocated twice).
      flops: FLOPs of the per-device program from ``cost_analysis()`` (``None`` if unknown).
      collectives: every collective of the program.
      compile_seconds: wall time of ``lower`` + ``compile``.
      hlo: the optimized HLO text.
    """

    argument_bytes: int | None
    output_bytes: int | None
    temp_bytes: int | None
    generated_code_bytes: int | None
    alias_bytes: int | None
    flops: float | None
    collectives: tuple[Collective, ...]
    compile_seconds: float
    hlo: str = dataclasses.field(repr=False)

    @classmethod
    def from_compiled(
        cls, compiled: Any, mesh: jax.sharding.Mesh, *, compile_seconds: float
    ) -> CompileReport:
        """Reads a ``jax.stages.Compiled`` for ``mesh``."""
        memory = _first(compiled.memory_analysis())
        cost = _first(compiled.cost_analysis())
        hlo = compiled.as_text()

        def read(name: str) -> int | None:
            value = getattr(memory, name, None)
            return None if value is None else int(value)

        flops = None
        if isinstance(cost, dict) and "flops" in cost:
            flops = float(cost["flops"])
        return cls(
            argument_bytes=read("argument_size_in_bytes"),
            output_bytes=read("output_size_in_bytes"),
            temp_bytes=read("temp_size_in_bytes"),
            generated_code_bytes=read("generated_code_size_in_bytes"),
            alias_bytes=read("alias_size_in_bytes"),
            flops=flops,
            collectives=tuple(parse_collectives(hlo, mesh)),
            compile_seconds=compile_seconds,
            hlo=hlo,
        )

    def communication(self) -> dict[tuple[str, tuple[str, ...]], int]:
        """Bytes per (collective kind, mesh axes), summed over the program."""
        table: dict[tuple[str, tuple[str, ...]], int] = {}
        for c in self.collectives:
            table[(c.kind, c.axes)] = table.get((c.kind, c.axes), 0) + c.bytes
        return table

    def bytes_per_axis(self) -> dict[str, int]:
        """Collective result bytes per mesh axis (a collective over two axes counts for each)."""
        per_axis: dict[str, int] = {}
        for c in self.collectives:
            for axis in c.axes or ("?",):
                per_axis[axis] = per_axis.get(axis, 0) + c.bytes
        return per_axis

    def describe(self) -> str:
        """A readable summary: memory per device, FLOPs, and communication per kind and axes."""

        def mb(value: int | None) -> str:
            return "n/a" if value is None else f"{value / 2**20:.2f} MiB"

        lines = [
            f"compile time {self.compile_seconds:.2f} s",
            f"memory per device: arguments {mb(self.argument_bytes)}, outputs "
            f"{mb(self.output_bytes)}, temporaries {mb(self.temp_bytes)}, generated code "
            f"{mb(self.generated_code_bytes)}",
            f"FLOPs per device: {'n/a' if self.flops is None else f'{self.flops:.3e}'}",
            "communication per step (result bytes per device):",
        ]
        table = self.communication()
        if not table:
            lines.append("  none")
        for (kind, axes), nbytes in sorted(table.items()):
            count = sum(1 for c in self.collectives if (c.kind, c.axes) == (kind, axes))
            lines.append(
                f"  {kind:<19} over {'×'.join(axes) or '?':<16} {count:>3} op(s) {mb(nbytes)}"
            )
        return "\n".join(lines)
