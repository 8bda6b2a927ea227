"""MeshSpec: declaration checks, -1 inference, build, describe and serialization."""

from __future__ import annotations

import json

import jax
import pytest

from titanax.mesh import MeshError, MeshSpec, TitanaxError


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"axes": (), "shape": ()}, r"axes is empty"),
        ({"axes": "data", "shape": (8,)}, r"axes must be a sequence of names"),
        ({"axes": ("data", "data"), "shape": (4, 2)}, r"duplicate axis names \['data'\]"),
        ({"axes": ("da ta",), "shape": (8,)}, r"'da ta' is not a Python identifier"),
        ({"axes": ("data", "tensor"), "shape": (-1, -1)}, r"more than one -1"),
        ({"axes": ("data", "tensor"), "shape": (0, 8)}, r"axis 'data' has size 0"),
        ({"axes": ("data", "tensor"), "shape": (-2, 8)}, r"axis 'data' has size -2"),
        ({"axes": ("data",), "shape": (2.0,)}, r"size of axis 'data' is 2.0, not an int"),
        ({"axes": ("data", "tensor"), "shape": (8,)}, r"2 axes but 1 sizes"),
        ({"axes": ("data",), "shape": 8}, r"shape must be a sequence of sizes"),
        ({"axes": ("data",), "shape": (8,), "devices": 0}, r"devices=0 must be a positive"),
        ({"axes": ("data",), "shape": (8,), "devices": "gpu"}, r"devices='gpu' is not understood"),
        ({"axes": ("data",), "shape": (8,), "devices": True}, r"devices=True is a bool"),
        ({"axes": ("data",), "shape": (8,), "devices": ["x"]}, r"not all jax devices"),
        ({"axes": ("data",), "shape": (8,), "axis_types": "manual"}, r"'manual' for axis '\*'"),
        (
            {"axes": ("data", "tensor"), "shape": (4, 2), "axis_types": ("auto",)},
            r"must be one type for all axes or a sequence of 2 types",
        ),
        (
            {"axes": ("data", "tensor"), "shape": (4, 2), "across_hosts": (3, 1)},
            r"axis 'data' of size 4 does not divide into across_hosts=3",
        ),
        (
            {"axes": ("data", "tensor"), "shape": (4, 2), "across_hosts": (1,)},
            r"needs one factor per axis",
        ),
    ],
)
def test_invalid_declarations_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(MeshError, match=match):
        MeshSpec(**kwargs)  # type: ignore[arg-type]


def test_errors_are_titanax_and_value_errors() -> None:
    with pytest.raises(TitanaxError):
        MeshSpec(axes=(), shape=())
    with pytest.raises(ValueError, match="axes is empty"):
        MeshSpec(axes=(), shape=())


def test_duplicate_devices_raise(cpu_devices: list[jax.Device]) -> None:
    with pytest.raises(MeshError, match=r"device ids \[0, 0\] with repeats"):
        MeshSpec(axes=("data",), shape=(2,), devices=(cpu_devices[0], cpu_devices[0]))


@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_minus_one_is_inferred(count: int) -> None:
    spec = MeshSpec(axes=("data", "tensor"), shape=(-1, 1), devices=count)
    mesh = spec.build()
    assert dict(mesh.shape) == {"data": count, "tensor": 1}
    assert spec.resolve().shape == (count, 1)
    spec2 = MeshSpec(axes=("data", "tensor"), shape=(1, -1), devices=count)
    assert dict(spec2.build().shape) == {"data": 1, "tensor": count}


def test_minus_one_with_other_axes_on_8() -> None:
    mesh = MeshSpec(axes=("data", "fsdp", "tensor"), shape=(2, -1, 2)).build()
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.devices.size == 8


def test_shape_not_dividing_devices_names_values_and_fix() -> None:
    spec = MeshSpec(axes=("data", "tensor"), shape=(-1, 3))
    with pytest.raises(
        MeshError,
        match=r"cannot be built on 8 devices: 8 is not divisible by tensor=3 .*"
        r"divisors: \[1, 2, 4, 8\]",
    ):
        spec.build()


def test_product_not_equal_device_count() -> None:
    with pytest.raises(MeshError, match=r"multiply to 4, not 8.* devices=4 to use a subset"):
        MeshSpec(axes=("data", "tensor"), shape=(2, 2)).build()
    with pytest.raises(
        MeshError,
        match=r"multiply to 16, not 8. Make the product equal 8 or put -1 in one axis to infer "
        r"it\.$",
    ):
        MeshSpec(axes=("data", "tensor"), shape=(8, 2)).build()
    with pytest.raises(MeshError, match=r"multiply to 12, not 8.*infer it\.$"):
        MeshSpec(axes=("a", "b"), shape=(4, 3)).build()


def test_more_devices_than_exist() -> None:
    with pytest.raises(MeshError, match=r"devices=16 but only 8 cpu devices exist"):
        MeshSpec(axes=("data",), shape=(-1,), devices=16).build()


def test_unknown_devices(cpu_devices: list[jax.Device]) -> None:
    class FakeDevice:
        id = 99
        platform = "cpu"

    spec = MeshSpec(axes=("data",), shape=(2,), devices=(cpu_devices[0], FakeDevice()))
    with pytest.raises(MeshError, match=r"are not among jax.devices\(\)"):
        spec.build()


def test_explicit_device_list_keeps_order(cpu_devices: list[jax.Device]) -> None:
    chosen = (cpu_devices[5], cpu_devices[2], cpu_devices[7], cpu_devices[0])
    mesh = MeshSpec(axes=("data",), shape=(4,), devices=list(chosen)).build()
    assert [d.id for d in mesh.devices.flat] == [5, 2, 7, 0]


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        ("auto", (jax.sharding.AxisType.Auto, jax.sharding.AxisType.Auto)),
        ("EXPLICIT", (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Explicit)),
        (
            ("explicit", jax.sharding.AxisType.Auto),
            (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto),
        ),
    ],
)
def test_axis_types_reach_jax(types: object, expected: tuple[object, ...]) -> None:
    mesh = MeshSpec(axes=("data", "tensor"), shape=(4, 2), axis_types=types).build()  # type: ignore[arg-type]
    assert tuple(mesh.axis_types) == expected


def test_across_hosts_on_one_process() -> None:
    mesh = MeshSpec(axes=("data", "tensor"), shape=(4, 2), across_hosts=(1, 1)).build()
    assert dict(mesh.shape) == {"data": 4, "tensor": 2}
    spec = MeshSpec(axes=("data", "tensor"), shape=(-1, 2), across_hosts=(2, 1))
    with pytest.raises(MeshError, match=r"multiply to 2 but the devices come from 1 processes"):
        spec.build()
    with pytest.raises(MeshError, match=r"axis 'data' resolves to 1, which does not divide"):
        MeshSpec(axes=("data", "tensor"), shape=(-1, 2), devices=2, across_hosts=(2, 1)).build()


def test_to_dict_round_trips_through_json(cpu_devices: list[jax.Device]) -> None:
    specs = [
        MeshSpec(axes=("data", "tensor"), shape=(-1, 2), axis_types=("explicit", "auto")),
        MeshSpec(axes=("data",), shape=(4,), devices=4, across_hosts=(1,)),
        MeshSpec(axes=("data",), shape=(2,), devices=(cpu_devices[3], cpu_devices[1])),
    ]
    for spec in specs:
        data = json.loads(json.dumps(spec.to_dict()))
        assert MeshSpec.from_dict(data) == spec
    assert specs[0].to_dict() == {
        "axes": ["data", "tensor"],
        "shape": [-1, 2],
        "devices": "all",
        "axis_types": ["explicit", "auto"],
        "across_hosts": None,
    }


def test_from_dict_rejects_unknown_keys_and_devices() -> None:
    with pytest.raises(MeshError, match=r"unknown keys \['sahpe'\], missing keys \['shape'\]"):
        MeshSpec.from_dict({"axes": ["data"], "sahpe": [8]})
    with pytest.raises(MeshError, match=r"device ids \[42\] do not exist here"):
        MeshSpec.from_dict({"axes": ["data"], "shape": [1], "devices": [42]})


def test_from_mesh_records_what_ran() -> None:
    mesh = MeshSpec(axes=("data", "tensor"), shape=(-1, 2), axis_types="explicit").build()
    spec = MeshSpec.from_mesh(mesh)
    assert spec.shape == (4, 2)
    assert spec.axis_types_tuple == ("explicit", "explicit")
    assert spec.devices == 8


def test_describe_refuses_another_mesh() -> None:
    other = MeshSpec(axes=("x",), shape=(8,)).build()
    with pytest.raises(MeshError, match=r"the mesh has axes \('x',\), this spec \('data',"):
        MeshSpec(axes=("data", "tensor"), shape=(4, 2)).describe(other)


def test_describe_lists_axes_sizes_and_devices() -> None:
    spec = MeshSpec(axes=("data", "tensor"), shape=(-1, 2))
    text = spec.describe()
    assert "Mesh data=4 × tensor=2 — 8 cpu devices" in text
    lines = [line for line in text.splitlines() if line.strip().startswith(("│ data", "│ tensor"))]
    assert len(lines) == 2
    assert "auto" in lines[0]
    assert "[[0 1]" in text
