"""Plan: composition order, FSDP choice, ZeRO-1, validation (all problems at once),
serialization."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import re
from typing import Any

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from titanax.sharding import (
    DP,
    FSDP,
    PP,
    TP,
    Plan,
    Rules,
    ShardingError,
    tp_rules,
    tree_paths,
)


def by_path(tree: Any, specs: Any) -> dict[str, P]:
    return dict(zip(tree_paths(tree), jax.tree.leaves(specs), strict=True))


# -- records ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DP("data-1"), r"DP: axis='data-1' must be a mesh axis name"),
        (lambda: DP(accumulate_steps=0), r"DP: accumulate_steps=0 must be an int >= 1"),
        (lambda: FSDP(min_size_bytes=-1), r"FSDP: min_size_bytes=-1 must be an int >= 0"),
        (lambda: FSDP(zero1=1), r"FSDP: zero1=1 must be True or False"),
        (lambda: TP(rules=3), r"TP: rules=3 must be Rules"),
        (lambda: PP(stages=0, microbatches=1), r"PP: stages=0 must be an int >= 1"),
        (lambda: PP(stages=2, microbatches=True), r"PP: microbatches=True must be an int"),
        (lambda: PP(stages=2, microbatches=4, schedule="zb"), r"PP: schedule='zb' is not one of"),
        (
            lambda: PP(stages=2, microbatches=4, activations="remat"),  # type: ignore[arg-type]
            r"PP: activations='remat' is not one of \['recompute', 'stash'\]",
        ),
        (
            lambda: PP(stages=2, microbatches=4, virtual_stages=2),
            r"PP: virtual_stages=2 needs schedule='interleaved' \(got '1f1b'\)",
        ),
        (
            lambda: PP(stages=2, microbatches=4, schedule="interleaved"),
            r"PP: schedule='interleaved' needs virtual_stages >= 2 \(got 1\)",
        ),
        (
            lambda: PP(stages=4, microbatches=6, schedule="interleaved", virtual_stages=2),
            r"microbatches divisible by stages .* got microbatches=6, stages=4",
        ),
        (
            lambda: PP(stages=2, microbatches=4, stacked=("",)),
            r"PP: stacked=\(''",
        ),
        (lambda: Plan(data_parallel=FSDP()), r"Plan: data_parallel=FSDP\(.*\) must be a DP"),
        (lambda: Plan(rules=3), r"Plan: rules=3 must be Rules"),
        (lambda: Plan(indivisible="pad"), r"Plan: indivisible='pad' must be 'raise'"),
    ],
)
def test_records_validate_on_construction(make: Any, message: str) -> None:
    with pytest.raises(ShardingError, match=message):
        make()


def test_records_defaults_and_conversions() -> None:
    assert DP().axis == "data"
    assert FSDP().axis == "fsdp"
    assert FSDP().min_size_bytes == 4096
    assert TP(rules={"a": ["tensor"]}).rules == Rules({"a": P("tensor")})
    assert PP(stages=2, microbatches=2, stacked="layers/*").stacked == ("layers/*",)
    assert PP(stages=2, microbatches=2).activations == "recompute"
    assert PP(stages=2, microbatches=2, activations="stash").activations == "stash"
    assert Plan(rules={"a": P()}).rules == Rules({"a": P()})
    plan = Plan(data_parallel=DP("data"), fsdp=FSDP("fsdp"))
    assert plan.data_axes == ("data", "fsdp")
    assert Plan(fsdp=FSDP("fsdp")).data_axes == ("fsdp",)
    assert Plan().data_axes == ()


# -- composition order ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh_3d(make_mesh):  # type: ignore[no-untyped-def]
    return make_mesh(("pipeline", "fsdp", "tensor"), (2, 2, 2))


def test_pp_then_tp_then_fsdp_on_the_stacked_gpt(make_gpt, mesh_3d) -> None:  # type: ignore[no-untyped-def]
    params = make_gpt(stacked=True, layers=2)
    plan = Plan(
        fsdp=FSDP("fsdp", min_size_bytes=0),
        tensor_parallel=TP("tensor", rules=tp_rules.gpt(stacked=True)),
        pipeline_parallel=PP("pipeline", stages=2, microbatches=2),
    )
    specs = by_path(params, plan.param_specs(params, mesh_3d))
    assert specs["blocks/attn/q/kernel"] == P("pipeline", "fsdp", "tensor")
    assert specs["blocks/attn/out/kernel"] == P("pipeline", "tensor", "fsdp")
    assert specs["blocks/mlp/up/bias"] == P("pipeline", "tensor")  # [L, ff]: no free dim left
    assert specs["blocks/ln1/scale"] == P("pipeline", "fsdp")
    assert specs["embed/embedding"] == P("tensor", "fsdp")
    assert specs["head/kernel"] == P("fsdp", "tensor")
    # The same plan with the pipeline axis written into the TP rules gives the same specs.
    plan2 = Plan(
        fsdp=FSDP("fsdp", min_size_bytes=0),
        tensor_parallel=TP("tensor", rules=tp_rules.gpt(stacked=True, pipeline_axis="pipeline")),
        pipeline_parallel=PP("pipeline", stages=2, microbatches=2),
    )
    assert plan2.param_specs(params, mesh_3d) == plan.param_specs(params, mesh_3d)


def test_pp_conflict_with_a_rule_on_the_layer_dim(make_gpt, mesh_3d) -> None:  # type: ignore[no-untyped-def]
    params = {"blocks": {"w": np.zeros((2, 4, 4), np.float32)}}
    plan = Plan(
        tensor_parallel=TP("tensor", rules={"blocks/w": P("tensor")}),
        pipeline_parallel=PP("pipeline", stages=2, microbatches=2),
    )
    with pytest.raises(
        ShardingError,
        match=re.escape(
            "Plan.param_specs: path 'blocks/w' with shape (2, 4, 4): TP.rules rule 'blocks/w' "
            "puts 'tensor' on dim 0, but PP stacked glob 'blocks/*' shards dim 0 (the layer dim) "
            "over pipeline axis 'pipeline'. Fix: make the rule's first entry None or 'pipeline'"
        ),
    ):
        plan.param_specs(params, mesh_3d)


def test_user_rules_are_consulted_before_tp_rules(make_gpt, make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(("data", "tensor"), (4, 2))
    params = make_gpt()
    plan = Plan(
        data_parallel=DP("data"),
        tensor_parallel=TP("tensor", rules=tp_rules.gpt()),
        rules={"*/q/kernel": P(), "head/*": P("tensor", None)},  # less specific than TP's rules
    )
    specs = by_path(params, plan.param_specs(params, mesh))
    assert specs["blocks/1/attn/q/kernel"] == P()
    assert specs["blocks/1/attn/k/kernel"] == P(None, "tensor")
    assert specs["head/kernel"] == P("tensor", None)
    layout = plan.layout(params, mesh)
    rows = {r.path: r for r in layout.rows}
    assert rows["blocks/1/attn/q/kernel"].rule == "rule '*/q/kernel'"
    assert rows["blocks/1/attn/k/kernel"].rule == "tp 'blocks/*/attn/k/kernel'"


def test_fsdp_picks_the_largest_free_divisible_dim(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(("fsdp", "tensor"), (4, 2))
    params = {
        "wide": np.zeros((8, 64), np.float32),  # dim 1 is larger
        "tie": np.zeros((16, 16), np.float32),  # tie: lowest dim
        "odd": np.zeros((6, 12), np.float32),  # 6 does not divide by 4: dim 1
        "none": np.zeros((3, 5), np.float32),  # nothing divides: replicated
        "small": np.zeros((4,), np.float32),  # 16 bytes < min_size_bytes
        "ruled": np.zeros((8, 8), np.float32),  # a rule already uses the fsdp axis
        "taken": np.zeros((64, 8), np.float32),  # largest dim taken by TP: next free dim
    }
    plan = Plan(
        fsdp=FSDP("fsdp", min_size_bytes=32),
        tensor_parallel=TP(rules={"ruled": P(None, "fsdp"), "taken": P("tensor")}),
    )
    assert plan.param_specs(params, mesh) == {
        "wide": P(None, "fsdp"),
        "tie": P("fsdp"),
        "odd": P(None, "fsdp"),
        "none": P(),
        "small": P(),
        "ruled": P(None, "fsdp"),
        "taken": P("tensor", "fsdp"),
    }


def test_zero1_shards_only_the_optimizer_state(make_gpt, make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(("data", "fsdp"), (2, 4))
    params = make_gpt()
    plan = Plan(data_parallel=DP("data"), fsdp=FSDP("fsdp", min_size_bytes=0, zero1=True))
    param_specs = plan.param_specs(params, mesh)
    opt_specs = by_path(params, plan.optimizer_specs(params, mesh))
    assert all(s == P() for s in jax.tree.leaves(param_specs))
    assert opt_specs["embed/embedding"] == P("fsdp")
    assert opt_specs["blocks/0/mlp/up/kernel"] == P(None, "fsdp")
    assert plan.data_axes == ("data", "fsdp")
    full = Plan(data_parallel=DP("data"), fsdp=FSDP("fsdp", min_size_bytes=0))
    assert full.param_specs(params, mesh) == full.optimizer_specs(params, mesh)
    assert full.optimizer_specs(params, mesh) == plan.optimizer_specs(params, mesh)


# -- validation -------------------------------------------------------------------------------


def test_a_dim_of_17_under_an_8_way_rule_raises_early(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(("tensor",), (8,))
    params = {"head": {"kernel": np.zeros((16, 17), np.float32)}}
    plan = Plan(tensor_parallel=TP("tensor", rules=tp_rules.gpt()))
    message = re.escape(
        "path 'head/kernel' with shape (16, 17): dim 1 has size 17, not divisible by mesh axis "
        "'tensor' of size 8 (spec P(None, 'tensor') from tp 'head/kernel')."
    )
    with pytest.raises(ShardingError, match="Plan.validate: " + message):
        plan.validate(mesh, params=params)
    with pytest.raises(ShardingError, match="Plan.param_specs: " + message):
        plan.param_specs(params, mesh)
    shapes = jax.eval_shape(lambda: {"head": {"kernel": jax.numpy.zeros((16, 17))}})
    with pytest.raises(ShardingError, match=message):
        plan.param_specs(shapes, mesh)


def test_validate_collects_every_problem(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(("data", "tensor", "pipeline"), (2, 2, 2))
    plan = Plan(
        data_parallel=DP("data"),
        fsdp=FSDP("fsdp"),
        tensor_parallel=TP("data", rules={"*/kernel": P(None, "tensr")}),
        pipeline_parallel=PP("pipeline", stages=4, microbatches=3),
    )
    with pytest.raises(ShardingError) as info:
        plan.validate(mesh, batch={"x": np.zeros((10, 3))})
    text = str(info.value)
    assert text.startswith(
        "Plan.validate found 6 problems on mesh (data=2, tensor=2, pipeline=2):\n  - "
    )
    expected = [
        "fsdp (FSDP) uses axis 'fsdp', which is not in the mesh",
        "mesh axis 'data' has two roles, data_parallel (DP) and tensor_parallel (TP)",
        "PP(stages=4) does not match pipeline axis 'pipeline' of size 2",
        "PP(schedule='1f1b') has microbatches=3 < stages=4",
        "TP.rules rule '*/kernel' -> P(None, 'tensr') uses mesh axis 'tensr', which is not in "
        "the mesh",
        "batch leaf 'x' with shape (10, 3) has leading (batch) dim 10, not divisible by data=2 × "
        "microbatches=3 = 6",
    ]
    for piece in expected:
        assert piece in text, piece
    assert text.count("\n  - ") == 6


def test_validate_microbatches_message_names_both_values(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(("pipeline", "data"), (4, 2))
    plan = Plan(pipeline_parallel=PP("pipeline", stages=4, microbatches=2, schedule="1f1b"))
    with pytest.raises(
        ShardingError,
        match=re.escape(
            "Plan.validate: PP(schedule='1f1b') has microbatches=2 < stages=4; "
            "1f1b needs at least as many microbatches as stages to fill the pipeline. "
            "Fix: use microbatches >= 4, or schedule='gpipe'."
        ),
    ):
        plan.validate(mesh)
    Plan(pipeline_parallel=PP("pipeline", stages=4, microbatches=2, schedule="gpipe")).validate(
        mesh
    )


def test_validate_batch_divisibility(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(("data", "fsdp", "pipeline"), (2, 2, 2))
    plan = Plan(
        data_parallel=DP("data"),
        fsdp=FSDP("fsdp"),
        pipeline_parallel=PP("pipeline", stages=2, microbatches=2),
    )
    plan.validate(mesh, batch={"x": np.zeros((8, 3)), "n": np.int32(1)})
    with pytest.raises(
        ShardingError,
        match=re.escape(
            "Plan.validate: batch leaf 'x' with shape (12, 3) has leading (batch) dim 12, not "
            "divisible by data=2 × fsdp=2 × microbatches=2 = 8 (data axes ('data', 'fsdp') and "
            "microbatches). Fix: use a batch size that is a multiple of 8."
        ),
    ):
        plan.validate(mesh, batch={"x": np.zeros((12, 3))})
    assert plan.batch_specs({"x": np.zeros((8, 3))}, mesh) == {"x": P(("data", "fsdp"))}


def test_validate_virtual_stages_need_divisible_layers(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(("pipeline", "data"), (2, 4))
    plan = Plan(
        pipeline_parallel=PP(
            "pipeline", stages=2, microbatches=4, schedule="interleaved", virtual_stages=2
        )
    )
    params = {"blocks": {"w": np.zeros((6, 4), np.float32)}}
    with pytest.raises(
        ShardingError,
        match=re.escape(
            "stacked path 'blocks/w' with shape (6, 4) has 6 layers, not divisible by stages × "
            "virtual_stages = 2 × 2 = 4."
        ),
    ):
        plan.validate(mesh, params=params)
    plan.validate(mesh, params={"blocks": {"w": np.zeros((8, 4), np.float32)}})


def test_validate_passes_for_a_good_plan(make_gpt, make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(("data", "fsdp", "tensor"), (2, 2, 2))
    plan = Plan(
        data_parallel=DP("data"),
        fsdp=FSDP("fsdp", min_size_bytes=0),
        tensor_parallel=TP("tensor", rules=tp_rules.gpt()),
    )
    assert plan.validate(mesh, params=make_gpt(), batch={"tokens": np.zeros((4, 8))}) is None


def test_indivisible_replicate_policy_on_the_plan(make_mesh, caplog) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(("tensor",), (8,))
    params = {"head": {"kernel": np.zeros((16, 17), np.float32)}}
    plan = Plan(tensor_parallel=TP(rules=tp_rules.gpt()), indivisible="replicate")
    with caplog.at_level("WARNING", logger="titanax.sharding"):
        assert plan.param_specs(params, mesh) == {"head": {"kernel": P(None, None)}}
    assert len(caplog.records) == 1
    assert "path 'head/kernel'" in caplog.records[0].getMessage()


# -- layout / describe ------------------------------------------------------------------------


def test_describe_shows_rows_totals_and_unmatched(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(("data", "tensor"), (4, 2))
    params = {"head": {"kernel": np.zeros((8, 32), np.float32)}, "other": np.zeros((4, 4))}
    plan = Plan(data_parallel=DP("data"), tensor_parallel=TP(rules=tp_rules.gpt()))
    layout = plan.layout(params, mesh)
    assert layout.unmatched == ("other",)
    assert layout.bytes_per_device == 8 * 16 * 4 + 16 * 8
    assert layout.total_bytes == 8 * 32 * 4 + 16 * 8
    assert layout.replicated_share == pytest.approx(128 / (512 + 128))
    text = plan.describe(params, mesh)
    assert "Layout on mesh (data=4, tensor=2)" in text
    assert re.search(r"head/kernel\s+│ \(8, 32\)\s+│ float32 │ P\(None, 'tensor'\)\s+│\s+512", text)
    assert "per device: 640 B (640 bytes) of 1.12 KiB in total; replicated share 20.0%" in text
    assert "unmatched (1 paths no rule matched): other" in text
    as_dict = layout.to_dict()
    json.dumps(as_dict)
    assert as_dict["rows"][0]["spec"] == [None, "tensor"]
    assert as_dict["unmatched"] == ["other"]


def test_parameters_placed_by_a_pp_stacked_glob_are_matched(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(("pipeline", "data"), (2, 4))
    params = {"blocks": {"w": np.zeros((4, 8), np.float32)}, "embed": np.zeros((16, 8))}
    plan = Plan(pipeline_parallel=PP("pipeline", stages=2, microbatches=2))
    layout = plan.layout(params, mesh)
    assert layout.unmatched == ("embed",)
    (row,) = [r for r in layout.rows if r.path == "blocks/w"]
    assert (row.rule, tuple(row.spec)) == ("pp 'blocks/*'", ("pipeline",))


# -- serialization ----------------------------------------------------------------------------


def full_plan() -> Plan:
    return Plan(
        data_parallel=DP("data", accumulate_steps=2),
        fsdp=FSDP("fsdp", min_size_bytes=1024, zero1=True),
        tensor_parallel=TP("tensor", rules=tp_rules.gpt(stacked=True, pipeline_axis="pipeline")),
        pipeline_parallel=PP(
            "pipeline", stages=2, microbatches=4, schedule="interleaved", virtual_stages=2
        ),
        rules={"head/kernel": P(None, ("tensor", "fsdp"))},
        indivisible="replicate",
    )


def test_to_dict_round_trips_through_json() -> None:
    plan = full_plan()
    data = json.loads(json.dumps(plan.to_dict()))
    assert Plan.from_dict(data) == plan
    assert data["rules"] == [["head/kernel", [None, ["tensor", "fsdp"]]]]
    assert data["pipeline_parallel"]["stacked"] == ["blocks/*"]
    assert Plan.from_dict(Plan().to_dict()) == Plan()


def test_plans_copy_and_pickle() -> None:
    plan = full_plan()
    assert copy.deepcopy(plan) == plan
    assert pickle.loads(pickle.dumps(plan)) == plan
    assert hash(plan) == hash(copy.deepcopy(plan))


def test_fingerprint_is_stable_and_sensitive() -> None:
    plan = full_plan()
    assert plan.fingerprint() == Plan.from_dict(plan.to_dict()).fingerprint()
    assert len(plan.fingerprint()) == 64
    canonical = (
        '{"data_parallel":{"accumulate_steps":1,"axis":"data"},"format":"titanax.sharding.Plan/1",'
        '"fsdp":null,"indivisible":"raise","pipeline_parallel":null,"rules":[],'
        '"tensor_parallel":null}'
    )
    assert Plan(data_parallel=DP("data")).fingerprint() == (
        hashlib.sha256(canonical.encode()).hexdigest()
    )
    assert (
        Plan(data_parallel=DP("data", accumulate_steps=2)).fingerprint()
        != Plan(data_parallel=DP("data")).fingerprint()
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sharding": 1}, r"unknown keys \['sharding'\]"),
        ({"format": "other/9"}, r"format 'other/9' is not 'titanax.sharding.Plan/1'"),
        ({"fsdp": 3}, r"fsdp must be a mapping of FSDP fields, got 3"),
        ({"fsdp": {"axes": "x"}}, r"fsdp has unknown fields \['axes'\]; FSDP takes"),
        ({"pipeline_parallel": {"axis": "pipeline"}}, r"Plan.from_dict: pipeline_parallel: "),
        ({"data_parallel": {"accumulate_steps": 0}}, r"DP: accumulate_steps=0"),
        ([], r"expected a mapping"),
    ],
)
def test_from_dict_errors(data: Any, message: str) -> None:
    with pytest.raises(ShardingError, match=message):
        Plan.from_dict(data)


def test_from_dict_accepts_hand_written_configs() -> None:
    plan = Plan.from_dict(
        {"data_parallel": {}, "tensor_parallel": {"rules": {"head/kernel": [None, "tensor"]}}}
    )
    assert plan == Plan(
        data_parallel=DP(), tensor_parallel=TP(rules={"head/kernel": P(None, "tensor")})
    )


def test_validate_accepts_a_meshspec_and_names_non_meshes() -> None:
    from titanax.mesh import MeshSpec

    plan = Plan(data_parallel=DP("data"))
    plan.validate(MeshSpec(axes=("data",), shape=(-1,)))
    with pytest.raises(ShardingError, match=r"expected a mesh .* got NoneType None"):
        plan.validate(None)  # type: ignore[arg-type]


def test_non_numeric_leaves_are_named(make_mesh) -> None:  # type: ignore[no-untyped-def]
    plan = Plan(data_parallel=DP("data"))
    mesh = make_mesh(("data",), (8,))
    with pytest.raises(ShardingError, match=r"leaf 'blocks/w' is str 'hello', not an array"):
        plan.validate(mesh, params={"blocks": {"w": "hello"}})
