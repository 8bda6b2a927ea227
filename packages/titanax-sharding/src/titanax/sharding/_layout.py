"""``Layout``: what every leaf costs on each device under a spec tree, as a table or a dict."""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from jax.sharding import PartitionSpec
from rich.console import Console
from rich.table import Table

from titanax.sharding._specs import entry_axes, format_spec

__all__ = ["Layout", "LayoutRow", "itemsize", "shard_shape"]


def itemsize(dtype: Any) -> int:
    """Bytes per element of ``dtype`` (NumPy, JAX and extended dtypes)."""
    try:
        return int(np.dtype(dtype).itemsize)
    except TypeError:
        return int(getattr(dtype, "itemsize", 0))


def shard_shape(
    shape: tuple[int, ...], spec: PartitionSpec, sizes: Mapping[str, int]
) -> tuple[int, ...]:
    """Shape of one device's shard: each dim divided by the product of its axes' sizes."""
    out = list(shape)
    for dim, entry in enumerate(spec):
        n = math.prod(sizes[a] for a in entry_axes(entry))
        out[dim] = -(-shape[dim] // n)
    return tuple(out)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


def _spec_json(spec: PartitionSpec) -> list[Any]:
    return [list(e) if isinstance(e, tuple) else e for e in spec]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LayoutRow:
    """One leaf of a :class:`Layout`.

    Attributes:
      path: ``"/"``-joined leaf path.
      shape: global shape.
      dtype: dtype name, e.g. ``"float32"``.
      spec: the leaf's ``PartitionSpec``.
      bytes_per_device: exact bytes of one device's shard (every device holds the same amount).
      total_bytes: bytes of the whole (global) leaf.
      rule: what produced the spec (``"tp 'blocks/*/attn/q/kernel' + fsdp"``), ``None`` when
        nothing did (replicated by default) or the spec was given.
      replicated: no mesh axis of size > 1 shards the leaf.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    spec: PartitionSpec
    bytes_per_device: int
    total_bytes: int
    rule: str | None
    replicated: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the row."""
        return {
            "path": self.path,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "spec": _spec_json(self.spec),
            "bytes_per_device": self.bytes_per_device,
            "total_bytes": self.total_bytes,
            "rule": self.rule,
            "replicated": self.replicated,
        }


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Layout:
    """The layout of a tree on a mesh: one row per leaf, plus per-device totals.

    Attributes:
      mesh: ``{axis: size}`` of the mesh.
      rows: one :class:`LayoutRow` per leaf, in ``jax.tree.leaves`` order.
      unmatched: paths of non-scalar leaves that no rule matched (empty when specs were given).
    """

    mesh: Mapping[str, int]
    rows: tuple[LayoutRow, ...]
    unmatched: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        entries: list[tuple[str, tuple[int, ...], Any, PartitionSpec, str | None]],
        sizes: Mapping[str, int],
        *,
        unmatched: tuple[str, ...] = (),
    ) -> Layout:
        """Rows from ``(path, shape, dtype, spec, rule)`` entries whose specs were checked."""
        rows = []
        for path, shape, dtype, spec, rule in entries:
            size = itemsize(dtype)
            local = shard_shape(shape, spec, sizes)
            replicated = all(sizes[a] == 1 for e in spec for a in entry_axes(e))
            rows.append(
                LayoutRow(
                    path=path,
                    shape=shape,
                    dtype=str(np.dtype(dtype)) if _numpy_dtype(dtype) else str(dtype),
                    spec=spec,
                    bytes_per_device=math.prod(local) * size,
                    total_bytes=math.prod(shape) * size,
                    rule=rule,
                    replicated=replicated,
                )
            )
        return cls(mesh=dict(sizes), rows=tuple(rows), unmatched=unmatched)

    @property
    def bytes_per_device(self) -> int:
        """Bytes every device holds for the whole tree."""
        return sum(r.bytes_per_device for r in self.rows)

    @property
    def total_bytes(self) -> int:
        """Bytes of the whole tree, counted once (global)."""
        return sum(r.total_bytes for r in self.rows)

    @property
    def replicated_bytes_per_device(self) -> int:
        """Bytes per device held by fully replicated leaves."""
        return sum(r.bytes_per_device for r in self.rows if r.replicated)

    @property
    def replicated_share(self) -> float:
        """Share (0..1) of each device's bytes that belong to fully replicated leaves."""
        total = self.bytes_per_device
        return self.replicated_bytes_per_device / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: mesh, rows, totals, replicated share and unmatched paths."""
        return {
            "mesh": dict(self.mesh),
            "rows": [r.to_dict() for r in self.rows],
            "bytes_per_device": self.bytes_per_device,
            "total_bytes": self.total_bytes,
            "replicated_share": self.replicated_share,
            "unmatched": list(self.unmatched),
        }

    def table(self, *, title: str | None = None) -> Table:
        """A ``rich.table.Table`` with one row per leaf and a totals footer."""
        mesh = ", ".join(f"{k}={v}" for k, v in self.mesh.items())
        table = Table(title=title or f"Layout on mesh ({mesh})", show_footer=True)
        table.add_column("path", footer="total per device")
        table.add_column("shape")
        table.add_column("dtype")
        table.add_column("spec")
        table.add_column("bytes/device", justify="right", footer=f"{self.bytes_per_device:,}")
        table.add_column("rule")
        for r in self.rows:
            table.add_row(
                r.path,
                str(r.shape),
                r.dtype,
                format_spec(r.spec),
                f"{r.bytes_per_device:,}",
                r.rule or "—",
            )
        return table

    def render(self, *, width: int = 140) -> str:
        """The table and a summary as plain text."""
        buffer = io.StringIO()
        console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
        console.print(self.table())
        console.print(
            f"per device: {_human(self.bytes_per_device)} ({self.bytes_per_device:,} bytes) of "
            f"{_human(self.total_bytes)} in total; replicated share "
            f"{100 * self.replicated_share:.1f}%"
        )
        if self.unmatched:
            listed = ", ".join(self.unmatched[:10]) + (" ..." if len(self.unmatched) > 10 else "")
            console.print(f"unmatched ({len(self.unmatched)} paths no rule matched): {listed}")
        else:
            console.print("unmatched: none")
        return buffer.getvalue()

    def __str__(self) -> str:
        return self.render()


def _numpy_dtype(dtype: Any) -> bool:
    try:
        np.dtype(dtype)
    except TypeError:
        return False
    return True
