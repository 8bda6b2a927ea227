"""GPTConfig validation, parameter count and FLOPs per token."""

from __future__ import annotations

import dataclasses
import math

import jax
import pytest

from titanax.models import (
    GPTConfig,
    ModelError,
    gpt_flops_per_token,
    gpt_init,
    gpt_param_count,
)

BASE = {"vocab_size": 32, "seq_len": 8, "d_model": 16, "n_heads": 2, "n_layers": 2}


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"vocab_size": 0}, r"GPTConfig: vocab_size=0 must be a positive int"),
        ({"seq_len": -3}, r"GPTConfig: seq_len=-3 must be a positive int"),
        ({"d_model": 16.0}, r"GPTConfig: d_model=16.0 is a float, not an int"),
        ({"n_heads": True}, r"GPTConfig: n_heads=True is a bool, not an int"),
        ({"n_layers": 0}, r"GPTConfig: n_layers=0 must be a positive int"),
        ({"n_heads": 3}, r"d_model=16 is not divisible by n_heads=3.*\[1, 2, 4, 8, 16\]"),
        ({"d_ff": 0}, r"GPTConfig: d_ff=0 must be a positive int"),
        ({"dropout": 1.0}, r"dropout=1.0 must be in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout=-0.1 must be in \[0, 1\)"),
        ({"dropout": "0.1"}, r"GPTConfig: dropout='0.1' is not a float"),
        ({"init_std": 0.0}, r"init_std=0.0 must be a positive finite float"),
        ({"init_std": math.inf}, r"init_std=inf must be a positive finite float"),
    ],
)
def test_invalid_configs_raise(override: dict[str, object], match: str) -> None:
    with pytest.raises(ModelError, match=match):
        GPTConfig(**{**BASE, **override})  # type: ignore[arg-type]


def test_defaults_and_derived_sizes() -> None:
    config = GPTConfig(**BASE)  # type: ignore[arg-type]
    assert config.d_ff == 64
    assert config.mlp_dim == 64
    assert config.head_dim == 8
    assert GPTConfig(**BASE, d_ff=24).mlp_dim == 24  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.d_model = 8  # type: ignore[misc]


@pytest.mark.parametrize("d_ff", [None, 24])
def test_param_count_equals_the_elements_of_init(d_ff: int | None) -> None:
    config = GPTConfig(**BASE, d_ff=d_ff)  # type: ignore[arg-type]
    for stacked in (False, True):
        shapes = jax.eval_shape(
            lambda k, s=stacked: gpt_init(config, k, stacked=s), jax.random.key(0)
        )
        assert gpt_param_count(config) == sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    embeddings = (config.vocab_size + config.seq_len) * config.d_model
    assert gpt_param_count(config, embeddings=False) == gpt_param_count(config) - embeddings


def test_gpt2_small_counts_and_flops() -> None:
    # GPT-2 small (124M with the head tied to the embedding; 124,439,808 params, Radford et al.
    # 2019). Ours unties the head, adding 768 * 50257 = 38,597,376.
    config = GPTConfig(vocab_size=50257, seq_len=1024, d_model=768, n_heads=12, n_layers=12)
    assert gpt_param_count(config) == 124_439_808 + 38_597_376
    non_embedding = 124_439_808 + 38_597_376 - 50257 * 768 - 1024 * 768
    assert gpt_param_count(config, embeddings=False) == non_embedding == 123_653_376
    # PaLM appendix B: 6 N + 12 L H Q T = 741,920,256 + 113,246,208.
    assert gpt_flops_per_token(config) == 855_166_464
