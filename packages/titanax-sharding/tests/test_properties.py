"""Property tests: random pytrees, random 8-device meshes and random rules or plans either
resolve to specs that ``jax.device_put`` accepts, or raise ``ShardingError`` — never a raw JAX
error."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from titanax.sharding import DP, FSDP, PP, TP, Plan, Rules, ShardingError, build_param_specs

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the shared tree
    suppress_health_check=[HealthCheck.too_slow],
)
AXES = ("data", "fsdp", "tensor", "pipeline")
SHAPES = [(8,), (2, 4), (4, 2), (2, 2, 2), (1, 8), (2, 1, 4), (8, 1, 1, 1)]
DIMS = st.sampled_from([1, 2, 3, 4, 6, 8, 16, 17])
KEYS = st.sampled_from(["a", "b", "kernel", "bias", "blocks", "0x"])
PATTERNS = st.sampled_from(
    [
        "*",
        "*/kernel",
        "*/bias",
        "a*",
        "*/0",
        "*/1/*",
        "?",
        "[ab]*",
        "a/*",
        "blocks/*",
        "*a*",
        "b",
        "kernel",
        "blocks/*/kernel",
    ]
)
NAMES = st.sampled_from([*AXES, "bogus"])
ENTRIES = st.one_of(st.none(), NAMES, st.tuples(NAMES, NAMES))
SPECS = st.lists(ENTRIES, max_size=4).map(lambda entries: P(*entries))


@st.composite
def meshes(draw: st.DrawFn) -> Mesh:
    shape = draw(st.sampled_from(SHAPES))
    names = draw(st.permutations(AXES))[: len(shape)]
    kind = draw(st.sampled_from([AxisType.Auto, AxisType.Explicit]))
    devices = np.array(jax.devices()[:8]).reshape(shape)
    return Mesh(devices, tuple(names), axis_types=(kind,) * len(shape))


leaves = st.lists(DIMS, max_size=3).map(lambda shape: np.ones(shape, np.float32))
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.dictionaries(KEYS, children, min_size=1, max_size=3),
        st.lists(children, min_size=1, max_size=3),
    ),
    max_leaves=8,
)
rule_lists = st.lists(st.tuples(PATTERNS, SPECS), max_size=4)


def place(tree: Any, mesh: Mesh, specs: Any) -> None:
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    placed = jax.device_put(tree, shardings)
    for got, want in zip(jax.tree.leaves(placed), jax.tree.leaves(tree), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)


@SETTINGS
@given(
    tree=trees,
    mesh=meshes(),
    rules=rule_lists,
    indivisible=st.sampled_from(["raise", "replicate"]),
)
def test_random_rules_resolve_to_placeable_specs_or_sharding_error(
    tree: Any, mesh: Mesh, rules: list[tuple[str, P]], indivisible: Any
) -> None:
    try:
        specs = build_param_specs(tree, Rules(rules), mesh=mesh, indivisible=indivisible)
    except ShardingError:
        event("ShardingError")
        return
    event("placed")
    place(tree, mesh, specs)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    axis = st.sampled_from([*AXES, "bogus"])
    return Plan(
        data_parallel=draw(st.none() | st.builds(DP, axis)),
        fsdp=draw(
            st.none()
            | st.builds(
                FSDP, axis, min_size_bytes=st.sampled_from([0, 16, 4096]), zero1=st.booleans()
            )
        ),
        tensor_parallel=draw(st.none() | st.builds(TP, axis, rules=rule_lists.map(_safe_rules))),
        pipeline_parallel=draw(
            st.none()
            | st.builds(
                PP,
                axis,
                stages=st.sampled_from([1, 2, 4, 8]),
                microbatches=st.sampled_from([1, 2, 8]),
                schedule=st.sampled_from(["gpipe", "1f1b"]),
            )
        ),
        rules=draw(rule_lists.map(_safe_rules)),
        indivisible=draw(st.sampled_from(["raise", "replicate"])),
    )


def _safe_rules(pairs: list[tuple[str, P]]) -> Rules:
    """Rules without patterns repeated with different specs (that raises at construction)."""
    return Rules(dict(pairs))


@SETTINGS
@given(
    tree=trees,
    batch=st.lists(DIMS, min_size=1, max_size=2).map(lambda s: {"x": np.ones(s, np.float32)}),
    mesh=meshes(),
    plan=plans(),
)
def test_random_plans_validate_consistently(tree: Any, batch: Any, mesh: Mesh, plan: Plan) -> None:
    try:
        plan.validate(mesh, params=tree, batch=batch)
    except ShardingError:
        valid = False
    else:
        valid = True
    try:
        param_specs = plan.param_specs(tree, mesh)
        optimizer_specs = plan.optimizer_specs(tree, mesh)
        batch_specs = plan.batch_specs(batch, mesh)
    except ShardingError:
        assert not valid, "validate passed but resolving the specs raised"
        event("ShardingError")
        return
    event("placed, validate " + ("passed" if valid else "raised"))
    place(tree, mesh, param_specs)
    place(tree, mesh, optimizer_specs)
    place(batch, mesh, batch_specs)
    layout = plan.layout(tree, mesh)
    assert layout.bytes_per_device <= layout.total_bytes
