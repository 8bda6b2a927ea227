"""parse_collectives: every replica-group notation XLA writes, mapped to its mesh axes."""

from __future__ import annotations

from typing import Any

import pytest

from titanax.exec import parse_collectives

PREFIX = "  %all-reduce.47 = (f32[], f32[]) all-reduce(%a, %b), channel_id=51, "
SUFFIX = ", use_global_device_ids=true, to_apply=%region_72.73.clone"


@pytest.fixture(scope="module")
def mesh(make_mesh: Any) -> Any:
    return make_mesh(("data", "tensor"), (4, 2))


@pytest.mark.parametrize(
    ("groups", "axes", "size"),
    [
        # explicit lists
        ("replica_groups={{0,1},{2,3},{4,5},{6,7}}", ("tensor",), 2),
        ("replica_groups={{0,2,4,6},{1,3,5,7}}", ("data",), 4),
        # iota: [groups, size] <= [dims] with an optional transpose
        ("replica_groups=[4,2]<=[8]", ("tensor",), 2),
        ("replica_groups=[2,4]<=[4,2]T(1,0)", ("data",), 4),
        # a named mesh followed by the grouped axes
        ("replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_1'}", ("tensor",), 2),
        ("replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}", ("data",), 4),
        # newer XLA: the device order between the mesh and the grouped axes
        (
            "replica_groups=mesh['axis_0'=1,'axis_1'=2,'axis_2'=4], device_ids=([4,2]T(1,0)) "
            "{'axis_1'}",
            ("tensor",),
            2,
        ),
        (
            "replica_groups=mesh['axis_0'=1,'axis_1'=2,'axis_2'=4], device_ids=([4,2]T(1,0)) "
            "{'axis_2'}",
            ("data",),
            4,
        ),
        ("replica_groups=mesh['axis_0'=2,'axis_1'=4], device_ids=([8]) {'axis_1','axis_0'}",
         ("data", "tensor"), 8),
    ],
)  # fmt: skip
def test_replica_groups_map_to_mesh_axes(mesh: Any, groups: str, axes: Any, size: int) -> None:
    (found,) = parse_collectives(PREFIX + groups + SUFFIX, mesh)
    assert (found.kind, found.axes, found.group_size, found.bytes) == (
        "all-reduce",
        axes,
        size,
        8,  # two f32 scalars
    )


def test_a_device_order_that_does_not_fit_the_mesh_maps_to_no_axis(mesh: Any) -> None:
    line = PREFIX + "replica_groups=mesh['axis_0'=4,'axis_1'=2], device_ids=([3]) {'axis_1'}"
    (found,) = parse_collectives(line + SUFFIX, mesh)
    assert (found.axes, found.group_size) == ((), 0)
