"""Pins the public API of titanax.sharding."""

from __future__ import annotations

import titanax.sharding
from titanax.mesh import TitanaxError
from titanax.sharding import tp_layers, tp_rules


def test_all_is_pinned() -> None:
    assert sorted(titanax.sharding.__all__) == [
        "DP",
        "FSDP",
        "Indivisible",
        "Layout",
        "LayoutRow",
        "PP",
        "Plan",
        "Rules",
        "Schedule",
        "ShardingError",
        "SpecLike",
        "TP",
        "__version__",
        "abstract_state",
        "apply_named_sharding",
        "build_param_specs",
        "constrain",
        "path_str",
        "shard_batch_specs",
        "spec_for",
        "tp_layers",
        "tp_rules",
        "tree_paths",
    ]
    for name in titanax.sharding.__all__:
        assert hasattr(titanax.sharding, name)


def test_submodules_are_pinned() -> None:
    assert sorted(tp_rules.__all__) == ["flax_nnx", "gpt", "hf"]
    assert sorted(tp_layers.__all__) == [
        "column_parallel_dense",
        "row_parallel_dense",
        "vocab_parallel_cross_entropy",
        "vocab_parallel_embed",
    ]


def test_error_shares_the_root() -> None:
    assert issubclass(titanax.sharding.ShardingError, TitanaxError)
    assert issubclass(titanax.sharding.ShardingError, ValueError)
