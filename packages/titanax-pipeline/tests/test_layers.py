"""Interleaved layer order, and the reference executor's checks of a table."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from titanax.pipeline import (
    Op,
    PipelineError,
    build_schedule,
    layer_permutation,
    make_pipeline,
    reference_pipeline,
    to_natural_order,
    to_storage_order,
)


@pytest.mark.parametrize(("p", "v", "layers"), [(2, 2, 4), (2, 2, 8), (4, 2, 8), (2, 3, 12)])
def test_storage_order_puts_each_devices_chunks_together(p: int, v: int, layers: int) -> None:
    schedule = build_schedule("interleaved", stages=p, microbatches=p, virtual_stages=v)
    natural = {"w": np.arange(layers * 3).reshape(layers, 3), "b": np.arange(layers)}
    stored = to_storage_order(natural, schedule)
    per_chunk = layers // (p * v)
    for s in range(p):
        rows = stored["b"][s * layers // p : (s + 1) * layers // p]
        want = [(j * p + s) * per_chunk + k for j in range(v) for k in range(per_chunk)]
        assert rows.tolist() == want
    back = to_natural_order(stored, schedule)
    np.testing.assert_array_equal(back["w"], natural["w"])
    assert sorted(layer_permutation(layers, stages=p, virtual_stages=v).tolist()) == list(
        range(layers)
    )


def test_identity_without_virtual_stages() -> None:
    tree = {"w": jnp.arange(4.0)}
    assert to_storage_order(tree, build_schedule("1f1b", stages=2, microbatches=2)) is tree


def test_layer_permutation_errors() -> None:
    with pytest.raises(PipelineError, match=r"num_layers=6 is not a positive multiple of .* = 4"):
        layer_permutation(6, stages=2, virtual_stages=2)
    schedule = build_schedule("interleaved", stages=2, microbatches=2, virtual_stages=2)
    with pytest.raises(PipelineError, match=r"to_storage_order: leaves disagree on the leading"):
        to_storage_order({"a": np.zeros((4, 2)), "b": np.zeros((8,))}, schedule)
    with pytest.raises(PipelineError, match=r"to_natural_order: schedule must be a titanax"):
        to_natural_order({"a": np.zeros(4)}, "interleaved")  # type: ignore[arg-type]


def test_stage_params_without_leaves() -> None:
    from titanax.mesh import MeshSpec

    mesh = MeshSpec(axes=("pipeline",), shape=(2,), devices=2).build()
    pipe = make_pipeline(
        lambda prm, x: x,
        lambda h, y, t: (jnp.sum(y), jnp.float32(1)),
        mesh=mesh,
        schedule=build_schedule("gpipe", stages=2, microbatches=2),
    )
    with pytest.raises(PipelineError, match=r"stage_params has no leaves"):
        pipe({}, {}, jnp.zeros((2, 1, 3)), jnp.zeros((2, 1)))


def _stage(prm: dict[str, jnp.ndarray], x: jnp.ndarray) -> jnp.ndarray:
    return jnp.tanh(x * prm["w"][0])


def _loss(head: dict[str, jnp.ndarray], y: jnp.ndarray, t: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
    return jnp.sum((y - t) ** 2), jnp.float32(y.size)


def _reference(schedule: object) -> None:
    reference_pipeline(
        _stage,
        _loss,
        schedule=schedule,  # type: ignore[arg-type]
        stage_params={"w": jnp.ones((2, 3))},
        head_params={},
        inputs=jnp.ones((2, 1, 3)),
        targets=jnp.zeros((2, 1, 3)),
    )


def _with_tables(schedule: object, **columns: np.ndarray) -> object:
    broken = dataclasses.replace(schedule)  # type: ignore[type-var]
    object.__setattr__(broken, "_tables", schedule._tables._replace(**columns))  # type: ignore[attr-defined]
    return broken


def test_reference_rejects_a_table_that_reads_before_arrival() -> None:
    schedule = build_schedule("gpipe", stages=2, microbatches=2)
    _reference(schedule)  # the real table runs
    op = schedule.op.copy()
    mb = schedule.microbatch.copy()
    op[0, 1], mb[0, 1] = Op.F, 0  # stage 1 forwards microbatch 0 before stage 0 sent it
    with pytest.raises(PipelineError, match=r"tick 0, stage 1 needs the stage input of"):
        _reference(_with_tables(schedule, op=op, microbatch=mb))


def test_reference_rejects_a_table_that_leaves_work_undone() -> None:
    schedule = build_schedule("gpipe", stages=2, microbatches=2)
    op = schedule.op.copy()
    op[-1, 0] = Op.IDLE  # stage 0 never runs its last backward
    with pytest.raises(PipelineError, match=r"left messages .* unused or ops .* unrun"):
        _reference(_with_tables(schedule, op=op))
