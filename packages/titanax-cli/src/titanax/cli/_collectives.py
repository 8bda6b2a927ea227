"""The collectives of a compiled step, each mapped to the mesh axes it communicates over.

``titanax.exec.parse_collectives`` reads replica groups written as explicit lists, iota
(``[2,4]<=[8]``) and named meshes followed directly by the grouped axes
(``mesh['axis_0'=4,'axis_1'=2] {'axis_0'}``). Newer XLA versions put the device order between
the two — ``replica_groups=mesh['axis_0'=1,'axis_1'=2,'axis_2'=4], device_ids=([4,2]T(1,0))
{'axis_1'}`` — and such a collective came out with no axes (a ``?`` row in ``titanax
describe``). :func:`collectives_by_axis` rewrites those groups as explicit lists first, then
parses; collectives whose groups hold one device (no communication) are left out.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

__all__ = ["collectives_by_axis", "explicit_replica_groups"]

_NAMED_WITH_IDS = re.compile(
    r"replica_groups=mesh\[(?P<mesh>[^\]]*)\],\s*device_ids=\(\[(?P<iota>[0-9,]+)\]"
    r"(?:T\((?P<perm>[0-9,]+)\))?\)\s*\{(?P<axes>[^}]*)\}"
)


def _groups(match: re.Match[str]) -> str:
    dims = re.findall(r"'([^']+)'=(\d+)", match.group("mesh"))
    names = [n for n, _ in dims]
    sizes = [int(v) for _, v in dims]
    iota = [int(d) for d in match.group("iota").split(",")]
    if math.prod(iota) != math.prod(sizes):
        return match.group(0)
    ids = np.arange(math.prod(iota)).reshape(iota)
    if match.group("perm"):
        ids = ids.transpose([int(p) for p in match.group("perm").split(",")])
    ids = ids.reshape(sizes)
    listed = [names.index(n) for n in re.findall(r"'([^']+)'", match.group("axes")) if n in names]
    rest = [i for i in range(len(sizes)) if i not in listed]
    size = math.prod(sizes[i] for i in listed)
    rows = ids.transpose(rest + listed).reshape(-1, size).tolist()
    return "replica_groups={" + ",".join("{" + ",".join(map(str, r)) + "}" for r in rows) + "}"


def explicit_replica_groups(hlo_text: str) -> str:
    """``hlo_text`` with named-mesh replica groups that carry ``device_ids`` written out.

    Args:
      hlo_text: optimized HLO text of an SPMD program.

    Returns:
      The same text; ``replica_groups=mesh[...], device_ids=([a,b]T(p)) {'axis'}`` becomes
      ``replica_groups={{0,1},{2,3},...}`` (device positions in the mesh, one group per list).
    """
    return _NAMED_WITH_IDS.sub(_groups, hlo_text)


def collectives_by_axis(report: Any, mesh: Any) -> list[Any]:
    """The collectives of a ``titanax.exec.CompileReport`` with their mesh axes resolved.

    Args:
      report: the report of ``Engine.compile`` (its ``hlo`` text and ``collectives``).
      mesh: the ``jax.sharding.Mesh`` it was compiled for.

    Returns:
      ``titanax.exec.Collective`` records; ones over a single device are left out.
    """
    from titanax.exec import parse_collectives

    found = (
        parse_collectives(explicit_replica_groups(report.hlo), mesh)
        if report.hlo
        else list(report.collectives)
    )
    return [c for c in found if c.axes or c.group_size > 1]
