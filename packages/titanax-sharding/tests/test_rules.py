"""Rules: precedence, ties, scalars, YAML specs, and every validation error (pinned messages)."""

from __future__ import annotations

import logging
import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from titanax.sharding import Rules, ShardingError, build_param_specs, spec_for


@pytest.fixture(scope="module")
def mesh(make_mesh):  # type: ignore[no-untyped-def]
    return make_mesh(("data", "tensor"), (2, 4))


@pytest.fixture(scope="module")
def mesh8(make_mesh):  # type: ignore[no-untyped-def]
    return make_mesh(("tensor",), (8,))


# -- precedence -------------------------------------------------------------------------------

PRECEDENCE = [
    # (rules in order, path, expected winning pattern)
    ({"*": P("a"), "*/kernel": P(None, "b")}, "x/kernel", "*/kernel"),  # longer, same wildcards
    ({"*/kernel": P(None, "b"), "*": P("a")}, "x/kernel", "*/kernel"),  # order does not matter
    ({"blocks/*/kernel": P("a"), "blocks/0/kernel": P("b")}, "blocks/0/kernel", "blocks/0/kernel"),
    ({"blocks/?/kernel": P("a"), "blocks/*/k*": P("b")}, "blocks/0/kernel", "blocks/?/kernel"),
    ({"b*/[0-9]/k": P("a"), "blocks/*/k": P("b")}, "blocks/0/k", "blocks/*/k"),  # 2 vs 1 wildcard
    # A prefix match counts as "*/" + pattern: one more wildcard.
    ({"head/kernel": P("a"), "*/kernel": P("b")}, "params/head/kernel", "head/kernel"),
    ({"kernel": P("a"), "blocks/*/kernel": P("b")}, "blocks/0/kernel", "blocks/*/kernel"),
    ({"head/kernel": P("a")}, "head/kernel", "head/kernel"),
    ({"head/kernel": P("a")}, "lm/head/kernel", "head/kernel"),
    ({"head/kernel": P("a")}, "ahead/kernel", None),  # prefixes cut at "/" only
    ({"blocks/*": P("a")}, "opt/0/mu/blocks/attn/q", "blocks/*"),
]


@pytest.mark.parametrize(("rules", "path", "winner"), PRECEDENCE)
def test_most_specific_rule_wins(rules: dict, path: str, winner: str | None) -> None:
    found = Rules(rules).match(path)
    assert (found[0] if found else None) == winner


def test_equal_specificity_agreeing_is_fine() -> None:
    rules = Rules({"blocks/*/k": P("a"), "*/0/k": P("a")})  # 1 wildcard, 10 chars each
    assert rules.match("blocks/0/k") == ("blocks/*/k", P("a"))


def test_tie_that_disagrees_raises() -> None:
    rules = Rules({"blocks/*/attn/q/kernel": P(None, "t"), "blocks/0/attn/*/kernel": P("t")})
    with pytest.raises(
        ShardingError,
        match=re.escape(
            "Rules.match: path 'blocks/0/attn/q/kernel' is matched by rules "
            "'blocks/*/attn/q/kernel' -> P(None, 't') and 'blocks/0/attn/*/kernel' -> P('t'), "
            "which are equally specific (1 wildcards, 22 characters) but disagree. Fix: make one "
            "pattern more specific"
        ),
    ):
        rules.match("blocks/0/attn/q/kernel")


def test_question_mark_and_star_count_the_same() -> None:
    rules = Rules({"blocks/?/kernel": P("a"), "blocks/*/kernel": P("b")})
    with pytest.raises(ShardingError, match="equally specific"):
        rules.match("blocks/0/kernel")


def test_tie_is_reported_by_build_param_specs() -> None:
    rules = Rules({"a/*": P("x"), "*/b": P(None, "x")})
    with pytest.raises(ShardingError, match=r"build_param_specs: path 'a/b' is matched by rules"):
        build_param_specs({"a": {"b": np.zeros((2, 2))}}, rules)


# -- construction -----------------------------------------------------------------------------


def test_yaml_style_specs_are_normalized() -> None:
    rules = Rules(
        [
            ("a", ["data", None]),
            ("b", [["data", "fsdp"], None]),
            ("c", None),
            ("d", (("x",),)),
            ("e", [[]]),
        ]
    )
    assert dict(rules.items()) == {
        "a": P("data", None),
        "b": P(("data", "fsdp"), None),
        "c": P(),
        "d": P("x"),
        "e": P(None),
    }
    assert Rules(rules.to_list()) == rules
    assert rules.to_list()[1] == ["b", [["data", "fsdp"], None]]


def test_rules_are_ordered_immutable_and_concatenate() -> None:
    a = Rules({"x": P("t")})
    b = Rules({"y": P(None, "t")})
    both = a | b
    assert both.patterns() == ("x", "y")
    assert len(both) == 2
    assert list(both) == ["x", "y"]
    assert a | {"x": P("t")} == a  # same pattern, same spec: kept once
    assert hash(Rules({"x": ["t"]})) == hash(a)
    with pytest.raises(AttributeError, match="immutable"):
        a._items = ()  # type: ignore[misc]
    assert repr(a) == "Rules({'x': P('t')})"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"": P()}, "Rules: pattern '' must be a non-empty path glob"),
        ({"blocks/**/kernel": P()}, r"contains '\*\*'; patterns use fnmatch semantics"),
        ({"a": "tensor"}, r"spec 'tensor' is a bare string; write PartitionSpec\('tensor'\)"),
        ({"a": [1]}, r"spec entry 1 is not None, an axis name, or a tuple of axis names"),
        ({"a": [("x", 2)]}, r"entry \('x', 2\) must be a tuple of axis names"),
        ({"a": 3}, "spec 3 is not a PartitionSpec, tuple or list"),
        ([("a", P("x")), ("a", P("y"))], r"pattern 'a' is given twice with different specs"),
        ([("a",)], r"\('a',\) is not a \(glob, spec\) pair"),
        ("a", "expected a mapping"),
    ],
)
def test_bad_rules_raise(rules: object, message: str) -> None:
    with pytest.raises(ShardingError, match=message):
        Rules(rules)  # type: ignore[arg-type]


def test_concatenation_conflict_raises() -> None:
    with pytest.raises(
        ShardingError, match="given twice with different specs P\\('t'\\) and P\\(\\)"
    ):
        Rules({"x": P("t")}) | Rules({"x": P()})


# -- scalars and defaults ---------------------------------------------------------------------


def test_scalars_resolve_to_replicated_whatever_a_catch_all_says(mesh) -> None:  # type: ignore[no-untyped-def]
    tree = {"count": np.int32(0), "step": 3, "scale": np.float32(1.0), "w": np.zeros((4, 4))}
    specs = build_param_specs(tree, Rules({"*": P("tensor")}), mesh=mesh)
    assert specs == {"count": P(), "step": P(), "scale": P(), "w": P("tensor")}
    assert spec_for("count", (), Rules({"*": P("data", "tensor")}), mesh=mesh) == P()


def test_default_for_unmatched_paths() -> None:
    tree = {"a": np.zeros((4,)), "b": np.zeros((4,))}
    specs = build_param_specs(tree, Rules({"a": P("t")}), default=[None])
    assert specs == {"a": P("t"), "b": P(None)}


def test_spec_for_without_mesh_checks_rank_and_repeats_only() -> None:
    assert spec_for("w", (17, 3), Rules({"w": P("anything")})) == P("anything")
    with pytest.raises(ShardingError, match="used by dims 0 and 1"):
        spec_for("w", (4, 4), Rules({"w": P("t", "t")}))


# -- validation errors, pinned ----------------------------------------------------------------


def test_spec_longer_than_rank(mesh) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        ShardingError,
        match=re.escape(
            "spec_for: path 'ln/scale' with shape (16,) has rank 1, but spec P(None, 'tensor') "
            "from rule '*/scale' has 2 entries. Fix: give at most 1 entries (one per dim), or "
            "narrow the rule so it does not match 'ln/scale'."
        ),
    ):
        spec_for("ln/scale", (16,), Rules({"*/scale": P(None, "tensor")}), mesh=mesh)


def test_unknown_mesh_axis(mesh) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        ShardingError,
        match=re.escape(
            "spec_for: path 'head/kernel' with shape (16, 64): dim 1 uses mesh axis 'tensr', "
            "which is not in the mesh (data=2, tensor=4); spec P(None, 'tensr') from rule "
            "'head/kernel'. Fix: spell the axis as in the MeshSpec, or add it to the mesh."
        ),
    ):
        spec_for("head/kernel", (16, 64), Rules({"head/kernel": P(None, "tensr")}), mesh=mesh)


def test_axis_used_twice(mesh) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        ShardingError,
        match=re.escape(
            "spec_for: path 'w' with shape (8, 8): mesh axis 'tensor' (size 4) is used by dims 0 "
            "and 1 of spec P('tensor', 'tensor') from rule 'w'; a mesh axis can shard at most one "
            "dim, once. Fix: drop the repeated axis from the spec."
        ),
    ):
        spec_for("w", (8, 8), Rules({"w": P("tensor", "tensor")}), mesh=mesh)
    with pytest.raises(
        ShardingError, match=r"is used by dim 0 twice of spec P\(\('data', 'data'\)\)"
    ):
        spec_for("w", (8, 8), Rules({"w": P(("data", "data"))}), mesh=mesh)


def test_indivisible_dim(mesh8) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        ShardingError,
        match=re.escape(
            "spec_for: path 'blocks/0/mlp/up/kernel' with shape (16, 17): dim 1 has size 17, not "
            "divisible by mesh axis 'tensor' of size 8 (spec P(None, 'tensor') from rule "
            "'blocks/*/mlp/up/kernel'). Fix: make dim 1 a multiple of 8, use a rule that leaves "
            "dim 1 unsharded or shards another dim, or pass indivisible='replicate' to replicate "
            "it with a warning."
        ),
    ):
        spec_for(
            "blocks/0/mlp/up/kernel",
            (16, 17),
            Rules({"blocks/*/mlp/up/kernel": P(None, "tensor")}),
            mesh=mesh8,
        )


def test_indivisible_over_several_axes_names_the_product(mesh) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        ShardingError,
        match=re.escape(
            "dim 0 has size 12, not divisible by mesh axes ('data', 'tensor') of sizes 2×4 = 8"
        ),
    ):
        spec_for("w", (12,), Rules({"w": P(("data", "tensor"))}), mesh=mesh)


def test_default_spec_is_named_as_the_origin(mesh) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ShardingError, match=r"from the default spec\)\. Fix"):
        spec_for("w", (3,), Rules(), mesh=mesh, default=P("tensor"))


def test_build_param_specs_lists_every_problem(mesh) -> None:  # type: ignore[no-untyped-def]
    tree = {"a": np.zeros((3,)), "b": np.zeros((4,)), "c": np.zeros((4, 4))}
    rules = Rules({"a": P("tensor"), "b": P("nope"), "c": P("data", "data")})
    with pytest.raises(ShardingError) as info:
        build_param_specs(tree, rules, mesh=mesh)
    text = str(info.value)
    assert text.startswith("build_param_specs found 3 problems:\n  - ")
    assert "path 'a' with shape (3,): dim 0 has size 3" in text
    assert "path 'b' with shape (4,): dim 0 uses mesh axis 'nope'" in text
    assert "path 'c' with shape (4, 4): mesh axis 'data' (size 2) is used by dims 0 and 1" in text


def test_indivisible_replicate_warns_once_per_path(mesh8, caplog) -> None:  # type: ignore[no-untyped-def]
    tree = {"w": np.zeros((17, 17)), "v": np.zeros((16, 17)), "ok": np.zeros((8,))}
    rules = Rules({"w": P("tensor", None), "v": P("tensor", None), "ok": P("tensor")})
    with caplog.at_level(logging.WARNING, logger="titanax.sharding"):
        specs = build_param_specs(tree, rules, mesh=mesh8, indivisible="replicate")
    assert specs == {"w": P(None, None), "v": P("tensor", None), "ok": P("tensor")}
    records = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(records) == 1
    assert (
        "path 'w' with shape (17, 17): replicating dim 0 (size 17, mesh axis 'tensor' of "
        "size 8)" in records[0].getMessage()
    )


def test_bad_indivisible_policy() -> None:
    with pytest.raises(ShardingError, match="indivisible='drop' must be 'raise'"):
        build_param_specs({}, Rules(), indivisible="drop")  # type: ignore[arg-type]


def test_specs_are_accepted_by_device_put(mesh) -> None:  # type: ignore[no-untyped-def]
    tree = {"w": np.arange(32.0).reshape(8, 4), "b": np.zeros((4,))}
    specs = build_param_specs(tree, Rules({"w": P("data", "tensor")}), mesh=mesh)
    placed = jax.device_put(tree, jax.tree.map(lambda s: jax.NamedSharding(mesh, s), specs))
    np.testing.assert_array_equal(np.asarray(placed["w"]), tree["w"])
    assert placed["w"].sharding.spec == P("data", "tensor")
