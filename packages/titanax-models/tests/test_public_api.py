"""Pins the public API of titanax.models."""

from __future__ import annotations

import titanax.models
from titanax.mesh import TitanaxError


def test_all_is_pinned() -> None:
    assert sorted(titanax.models.__all__) == [
        "CNNConfig",
        "GPTConfig",
        "MLPConfig",
        "ModelError",
        "__version__",
        "cnn_apply",
        "cnn_init",
        "cross_entropy",
        "gpt_apply",
        "gpt_block",
        "gpt_blocks",
        "gpt_embed",
        "gpt_flops_per_token",
        "gpt_head",
        "gpt_init",
        "gpt_loss",
        "gpt_param_count",
        "is_stacked",
        "mlp_apply",
        "mlp_init",
        "softmax_cross_entropy_int",
        "stack_blocks",
        "unstack_blocks",
    ]
    for name in titanax.models.__all__:
        assert hasattr(titanax.models, name)


def test_error_shares_the_root() -> None:
    assert issubclass(titanax.models.ModelError, TitanaxError)
    assert issubclass(titanax.models.ModelError, ValueError)


def test_version() -> None:
    assert titanax.models.__version__ == "0.2.0"
