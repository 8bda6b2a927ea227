"""apply_named_sharding, abstract_state, shard_batch_specs and constrain."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from titanax.sharding import (
    ShardingError,
    abstract_state,
    apply_named_sharding,
    constrain,
    shard_batch_specs,
)


@pytest.fixture(scope="module")
def mesh(make_mesh):  # type: ignore[no-untyped-def]
    return make_mesh(("data", "tensor"), (4, 2))


def test_apply_named_sharding_places_every_leaf(mesh) -> None:  # type: ignore[no-untyped-def]
    tree = {"w": np.arange(32.0, dtype=np.float32).reshape(8, 4), "s": np.float32(2.0)}
    specs = {"w": P("data", "tensor"), "s": P()}
    out = apply_named_sharding(tree, mesh, specs)
    assert out["w"].sharding == NamedSharding(mesh, P("data", "tensor"))
    assert out["s"].sharding.spec == P()
    np.testing.assert_array_equal(np.asarray(out["w"]), tree["w"])
    assert out["w"].addressable_shards[0].data.shape == (2, 2)


def test_one_spec_for_every_leaf(mesh) -> None:  # type: ignore[no-untyped-def]
    out = apply_named_sharding([np.zeros((4,)), np.zeros((8, 2))], mesh, P("data"))
    assert [a.sharding.spec for a in out] == [P("data"), P("data")]


def test_structure_mismatch_names_the_paths(mesh) -> None:  # type: ignore[no-untyped-def]
    tree = {"a": np.zeros(4), "b": np.zeros(4)}
    with pytest.raises(
        ShardingError,
        match=re.escape(
            "apply_named_sharding: spec_tree does not have the structure of the tree (2 leaves vs "
            "2 specs): paths only in the tree: ['b']; paths only in spec_tree: ['c']. Fix: build "
            "spec_tree from the same tree"
        ),
    ):
        apply_named_sharding(tree, mesh, {"a": P(), "c": P()})


def test_structure_mismatch_of_node_types(mesh) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ShardingError, match="the paths agree but the node types differ"):
        apply_named_sharding([np.zeros(4)], mesh, (P(),))


def test_non_spec_leaf_in_spec_tree(mesh) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        ShardingError, match=r"spec_tree leaf at path 'a' is 'data' \(str\), not a PartitionSpec"
    ):
        apply_named_sharding({"a": np.zeros(4)}, mesh, {"a": "data"})


def test_spec_problems_raise_before_device_put(mesh) -> None:  # type: ignore[no-untyped-def]
    tree = {"a": np.zeros((3, 4)), "b": np.zeros((4,))}
    with pytest.raises(ShardingError) as info:
        apply_named_sharding(tree, mesh, {"a": P("data"), "b": P(None, "tensor")})
    text = str(info.value)
    assert "apply_named_sharding found 2 problems" in text
    assert (
        "path 'a' with shape (3, 4): dim 0 has size 3, not divisible by mesh axis 'data' of "
        "size 4 (spec P('data') from spec_tree)"
    ) in text
    assert "path 'b' with shape (4,) has rank 1, but spec P(None, 'tensor')" in text


def test_shape_dtype_structs_are_refused(mesh) -> None:  # type: ignore[no-untyped-def]
    tree = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
    with pytest.raises(ShardingError, match=r"leaves \['w'\] are jax.ShapeDtypeStruct"):
        apply_named_sharding(tree, mesh, {"w": P()})


def test_abstract_state_carries_named_shardings(mesh) -> None:  # type: ignore[no-untyped-def]
    shapes = jax.eval_shape(lambda: {"w": jnp.zeros((8, 4), jnp.bfloat16), "n": jnp.int32(0)})
    out = abstract_state(shapes, mesh, {"w": P("data", "tensor"), "n": P()})
    assert out["w"].shape == (8, 4)
    assert out["w"].dtype == jnp.bfloat16
    assert out["w"].sharding == NamedSharding(mesh, P("data", "tensor"))
    assert out["n"].sharding == NamedSharding(mesh, P())
    # Sharded initialisation from the abstract state.
    init = jax.jit(
        lambda: {"w": jnp.ones((8, 4), jnp.bfloat16), "n": jnp.int32(0)},
        out_shardings=jax.tree.map(lambda s: s.sharding, out),
    )
    made = init()
    assert made["w"].sharding.spec == P("data", "tensor")
    with pytest.raises(
        ShardingError,
        match=re.escape("dim 1 has size 4, not divisible by mesh axes ('data', 'tensor') of sizes"),
    ):
        abstract_state(shapes, mesh, {"w": P(None, ("data", "tensor")), "n": P()})


def test_shard_batch_specs(mesh) -> None:  # type: ignore[no-untyped-def]
    batch = {"tokens": np.zeros((8, 16), np.int32), "weight": np.float32(1.0)}
    assert shard_batch_specs(batch, ("data",)) == {"tokens": P("data"), "weight": P()}
    assert shard_batch_specs(batch, ("data", "tensor"), mesh=mesh) == {
        "tokens": P(("data", "tensor")),
        "weight": P(),
    }
    assert shard_batch_specs(batch, ()) == {"tokens": P(), "weight": P()}
    assert shard_batch_specs(batch, "data") == {"tokens": P("data"), "weight": P()}


def test_batch_not_divisible_names_leaf_size_and_axes(mesh) -> None:  # type: ignore[no-untyped-def]
    batch = {"x": np.zeros((6, 3))}
    with pytest.raises(
        ShardingError,
        match=re.escape(
            "shard_batch_specs: batch leaf 'x' with shape (6, 3) has leading (batch) dim 6, not "
            "divisible by the data axes ('data', 'tensor') (data=4 × tensor=2 = 8). Fix: use a "
            "batch size that is a multiple of 8."
        ),
    ):
        shard_batch_specs(batch, ("data", "tensor"), mesh=mesh)


def test_batch_axes_must_exist_and_be_names(mesh) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ShardingError, match=r"data axes \['fsdp'\] are not in the mesh"):
        shard_batch_specs({"x": np.zeros(8)}, ("data", "fsdp"), mesh=mesh)
    with pytest.raises(ShardingError, match="names an axis twice"):
        shard_batch_specs({"x": np.zeros(8)}, ("data", "data"))
    with pytest.raises(ShardingError, match="must be mesh axis names"):
        shard_batch_specs({"x": np.zeros(8)}, (1,))  # type: ignore[arg-type]


@pytest.mark.parametrize("axis_types", ["auto", "explicit", ("explicit", "auto")])
def test_constrain_inside_jit(make_mesh, axis_types) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(("data", "tensor"), (4, 2), axis_types=axis_types)
    x = jax.device_put(np.arange(64.0, dtype=np.float32).reshape(8, 8), NamedSharding(mesh, P()))
    seen = []

    @jax.jit
    def step(a: jax.Array) -> dict[str, jax.Array]:
        y = constrain({"h": a * 2.0}, mesh, {"h": P("data", "tensor")})
        seen.append(jax.typeof(y["h"]).sharding.spec)
        return {"h": y["h"] + 1.0}

    out = step(x)["h"]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x) * 2.0 + 1.0)
    assert out.sharding.spec == P("data", "tensor")
    assert {s.data.shape for s in out.addressable_shards} == {(2, 4)}
    explicit = [
        a
        for a, t in zip(("data", "tensor"), mesh.axis_types, strict=True)
        if t == jax.sharding.AxisType.Explicit
    ]
    # Explicit axes are part of the traced type; Auto ones are only a constraint.
    assert tuple(a for e in seen[0] if e for a in ((e,) if isinstance(e, str) else e)) == tuple(
        explicit
    )


def test_constrain_checks_the_spec(mesh) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ShardingError, match="constrain: path '' with shape \\(6,\\): dim 0"):
        jax.jit(lambda a: constrain(a, mesh, P("data")))(jnp.zeros(6))
