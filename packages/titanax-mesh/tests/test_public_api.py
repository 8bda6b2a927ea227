"""Pins the public API of titanax.mesh."""

from __future__ import annotations

import titanax.mesh
from titanax.mesh import collectives


def test_all_is_pinned() -> None:
    assert sorted(titanax.mesh.__all__) == [
        "AxisTypeName",
        "CollectiveError",
        "DistributedError",
        "ENV_VARS",
        "MeshError",
        "MeshSpec",
        "ProcessInfo",
        "TitanaxError",
        "__version__",
        "collectives",
        "global_device_count",
        "host_id",
        "initialize_distributed",
        "local_device_count",
        "process_count",
        "process_index",
        "process_info",
    ]
    for name in titanax.mesh.__all__:
        assert hasattr(titanax.mesh, name)


def test_collectives_all_is_pinned() -> None:
    assert sorted(collectives.__all__) == [
        "AxisName",
        "all_gather",
        "all_to_all",
        "axis_index",
        "axis_size",
        "broadcast",
        "pmax",
        "pmean",
        "pmin",
        "ppermute",
        "psum",
        "reduce_scatter",
    ]


def test_errors_share_the_root() -> None:
    for err in (titanax.mesh.MeshError, titanax.mesh.CollectiveError):
        assert issubclass(err, titanax.mesh.TitanaxError)
        assert issubclass(err, ValueError)
    assert issubclass(titanax.mesh.DistributedError, RuntimeError)
