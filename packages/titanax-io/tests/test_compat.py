"""validate_checkpoint_compatibility and inspect_checkpoint on hand-written metadata and a small
saved checkpoint."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from titanax.io import (
    Change,
    CheckpointError,
    OrbaxCheckpointer,
    inspect_checkpoint,
    validate_checkpoint_compatibility,
)
from titanax.mesh import MeshSpec
from titanax.sharding import DP, FSDP, PP, TP, Plan, tp_rules

SAVED_MESH = MeshSpec(axes=("data", "tensor"), shape=(2, 4))
SAVED_PLAN = Plan(data_parallel=DP("data"), tensor_parallel=TP("tensor", rules=tp_rules.gpt()))
PARAMS = {"w": np.zeros((8, 16), np.float32), "b": np.zeros(16, np.float32)}


def metadata(**overrides: Any) -> dict[str, Any]:
    base = {
        "step": 100,
        "format_version": 1,
        "mesh": SAVED_MESH.to_dict(),
        "plan": SAVED_PLAN.to_dict(),
        "plan_fingerprint": SAVED_PLAN.fingerprint(),
        "optimizer_fingerprint": "adamw(lr=3e-4)",
        "tree": {
            "params/w": {"shape": [8, 16], "dtype": "float32"},
            "params/b": {"shape": [16], "dtype": "float32"},
        },
        "versions": {"jax": "0.0.1", "titanax-io": "0.1.0"},
    }
    base.update(overrides)
    return base


def test_same_run_is_a_plain_restore() -> None:
    report = validate_checkpoint_compatibility(
        metadata(versions={}),
        SAVED_MESH,
        SAVED_PLAN,
        optimizer_fingerprint="adamw(lr=3e-4)",
        target={"params": PARAMS},
    )
    assert report.compatible
    assert not report.is_reshard
    assert report.changes == ()
    assert report.summary() == "checkpoint step 100: identical layout: plain restore"


def test_mesh_and_plan_changes_are_a_reshard(
    make_mesh: Callable[..., jax.sharding.Mesh],
) -> None:
    mesh = make_mesh(("fsdp",), (8,))
    plan = Plan(fsdp=FSDP("fsdp"))
    report = validate_checkpoint_compatibility(
        metadata(), mesh, plan, optimizer_fingerprint="adamw(lr=3e-4)", target={"params": PARAMS}
    )
    assert report.compatible
    assert report.is_reshard
    fields = set(report.fields)
    assert {"mesh.axes", "mesh.shape", "plan.data_parallel", "plan.fsdp"} <= fields
    assert "plan.tensor_parallel" in fields
    assert "versions.jax" in fields  # recorded, informational
    assert "mesh.devices" not in fields  # 8 devices before and after
    assert "compatible: reshard onto the current mesh/plan" in report.summary()
    assert "[reshard] mesh.shape: [2, 4] -> [8]" in str(report)


def test_device_count_and_pipeline_split_are_reshards() -> None:
    smaller = MeshSpec(axes=("data", "tensor"), shape=(1, 4), devices=4)
    staged = Plan(
        data_parallel=DP("data"),
        tensor_parallel=TP("tensor", rules=tp_rules.gpt()),
        pipeline_parallel=PP("pipeline", stages=2, microbatches=4),
    )
    report = validate_checkpoint_compatibility(metadata(), smaller.to_dict(), staged.to_dict())
    by_field = {c.field: c for c in report.changes}
    assert by_field["mesh.devices"].saved == 8
    assert by_field["mesh.devices"].current == 4
    assert by_field["plan.pipeline_parallel"].kind == "reshard"
    assert report.is_reshard


def test_optimizer_change_is_incompatible_and_named() -> None:
    with pytest.raises(
        CheckpointError,
        match=r"incompatible fields: \['optimizer_fingerprint'\]\n- \[incompatible\] "
        r"optimizer_fingerprint: \"adamw\(lr=3e-4\)\" -> \"sgd\(lr=0.1\)\"",
    ):
        validate_checkpoint_compatibility(
            metadata(), SAVED_MESH, SAVED_PLAN, optimizer_fingerprint="sgd(lr=0.1)"
        )
    report = validate_checkpoint_compatibility(
        metadata(),
        SAVED_MESH,
        SAVED_PLAN,
        optimizer_fingerprint="sgd(lr=0.1)",
        raise_on_incompatible=False,
    )
    assert not report.compatible
    assert not report.is_reshard
    assert [c.field for c in report.incompatible] == ["optimizer_fingerprint"]
    assert "INCOMPATIBLE (1 blocking change(s))" in report.summary()


def test_parameter_shape_dtype_and_structure_changes_are_incompatible() -> None:
    target = {"params": {"w": np.zeros((8, 32), np.float32), "v": np.zeros(3, jnp.bfloat16)}}
    report = validate_checkpoint_compatibility(
        metadata(), None, None, target=target, raise_on_incompatible=False
    )
    by_field = {c.field: c for c in report.incompatible}
    assert by_field["tree/params/w"].saved == "[8, 16]"
    assert by_field["tree/params/w"].current == "[8, 32]"
    assert by_field["tree/params/v"].note == "not in the checkpoint"
    assert by_field["tree/params/b"].note == "not in the current state"
    with pytest.raises(CheckpointError, match=r"tree/params/w: \"\[8, 16\]\" -> \"\[8, 32\]\""):
        report.raise_if_incompatible()


def test_newer_format_and_unrecorded_fields() -> None:
    bare = {"step": 5, "format_version": 2}
    report = validate_checkpoint_compatibility(
        bare,
        SAVED_MESH,
        SAVED_PLAN,
        optimizer_fingerprint="x",
        target={"params": PARAMS},
        raise_on_incompatible=False,
    )
    kinds = {c.field: c.kind for c in report.changes}
    assert kinds == {
        "mesh": "info",
        "plan": "info",
        "optimizer_fingerprint": "info",
        "tree": "info",
        "format_version": "incompatible",
    }


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([], None, None), r"metadata must be the checkpoint's JSON mapping"),
        (({}, 3, None), r"mesh must be a jax.sharding.Mesh, a MeshSpec"),
        (({"plan": {}}, None, 3), r"plan must be a titanax.sharding.Plan"),
    ],
)
def test_argument_errors(args: tuple[Any, Any, Any], match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        validate_checkpoint_compatibility(*args)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"step": "100"}, r"- step: expected a non-negative int, got str \"100\""),
        ({"format_version": 1.5}, r"- format_version: expected a non-negative int, got float"),
        ({"mesh": "2x4"}, r"- mesh: expected a JSON object \(MeshSpec.to_dict\(\)\), got str"),
        ({"mesh": {"axes": ["data"]}}, r"- mesh.shape: missing \(expected a list of ints\)"),
        ({"mesh": {"axes": ["data", "x"], "shape": [8]}}, r"- mesh.shape: \[8\] has 1 entries"),
        ({"plan": [1, 2]}, r"- plan: expected a JSON object, got list"),
        ({"optimizer_fingerprint": 7}, r"- optimizer_fingerprint: expected a string, got int 7"),
        ({"tree": {"params/w": {"shape": [8]}}}, r"- tree/params/w: missing \['dtype'\]"),
        (
            {"tree": {"params/w": {"shape": "8x16", "dtype": "float32"}}},
            r"- tree/params/w.shape: expected a list of non-negative ints, got str",
        ),
        ({"tree": {"params/w": 3}}, r"- tree/params/w: expected an object"),
        ({"versions": "new"}, r"- versions: expected a JSON object, got str"),
        ({1: "x"}, r"- keys \[1\]: JSON object keys are strings"),
    ],
)
def test_garbage_metadata_names_the_field(overrides: dict[Any, Any], match: str) -> None:
    with pytest.raises(CheckpointError, match=r"(?s)metadata \(step .*\) is malformed.*" + match):
        validate_checkpoint_compatibility(
            metadata(**{k: v for k, v in overrides.items() if isinstance(k, str)})
            | {k: v for k, v in overrides.items() if not isinstance(k, str)},
            SAVED_MESH,
            SAVED_PLAN,
            optimizer_fingerprint="adamw(lr=3e-4)",
            target={"params": PARAMS},
        )


def test_change_kind_is_checked() -> None:
    with pytest.raises(CheckpointError, match=r"kind='maybe' must be 'reshard'"):
        Change(field="x", saved=1, current=2, kind="maybe")  # type: ignore[arg-type]


def test_inspect_checkpoint_reads_metadata_only(
    tmp_path: pathlib.Path, make_mesh: Callable[..., jax.sharding.Mesh]
) -> None:
    mesh = make_mesh(("data", "tensor"), (2, 4))
    state = {
        "w": jax.device_put(jnp.ones((8, 16)), NamedSharding(mesh, P("data", "tensor"))),
        "s": jnp.int32(3),
    }
    root = tmp_path / "ckpt"
    with OrbaxCheckpointer(root, keep=None, async_save=False) as ckpt:
        ckpt.save(1, state, metadata={"data_position": 8})
        ckpt.save(2, state, metadata={"data_position": 16})
    (root / "3.orbax-checkpoint-tmp-1").mkdir()
    info = inspect_checkpoint(root)
    assert info.steps == (1, 2)
    assert info.step == 2
    assert info.paths == ("s", "w")
    assert info.leaves[1].shape == (8, 16)
    assert info.leaves[1].saved_sharding == "P('data', 'tensor') on data=2 × tensor=4"
    assert info.nbytes == 8 * 16 * 4 + 4
    assert info.metadata["data_position"] == 16
    assert info.skipped == ("3.orbax-checkpoint-tmp-1",)
    text = info.describe()
    assert "step 2 of [1, 2], 2 arrays" in text
    assert "skipped incomplete entries" in text
    one = inspect_checkpoint(root / "1")  # a step directory works too
    assert one.step == 1
    assert one.metadata["data_position"] == 8
    assert inspect_checkpoint(root, step=1).metadata["data_position"] == 8
    assert list(root.iterdir())  # nothing was cleaned up or changed
    assert (root / "3.orbax-checkpoint-tmp-1").is_dir()


def test_inspect_checkpoint_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(CheckpointError, match=r"is not a directory"):
        inspect_checkpoint(tmp_path / "missing")
    (tmp_path / "5.orbax-checkpoint-tmp-0").mkdir()
    with pytest.raises(
        CheckpointError,
        match=r"no complete checkpoint step in .* \(skipped incomplete entries: "
        r"\['5.orbax-checkpoint-tmp-0'\]\)",
    ):
        inspect_checkpoint(tmp_path)
    with OrbaxCheckpointer(tmp_path / "c", async_save=False) as ckpt:
        ckpt.save(1, {"a": jnp.ones(2)}, metadata={})
    with pytest.raises(CheckpointError, match=r"step 4 is not complete; complete steps: \[1\]"):
        inspect_checkpoint(tmp_path / "c", step=4)
