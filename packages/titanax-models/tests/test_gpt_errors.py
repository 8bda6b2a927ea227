"""Every ModelError of the GPT functions, raised at trace time (checked under jax.eval_shape)."""

from __future__ import annotations

import copy
import functools
from typing import Any

import jax
import jax.numpy as jnp
import pytest

from titanax.models import (
    GPTConfig,
    ModelError,
    gpt_apply,
    gpt_block,
    gpt_blocks,
    gpt_embed,
    gpt_head,
    gpt_init,
    is_stacked,
    stack_blocks,
    unstack_blocks,
)

CONFIG = GPTConfig(vocab_size=32, seq_len=8, d_model=16, n_heads=2, n_layers=2)
TOKENS = jax.ShapeDtypeStruct((2, 8), jnp.int32)
X = jax.ShapeDtypeStruct((2, 8, 16), jnp.float32)


def _abstract(config: GPTConfig = CONFIG, *, stacked: bool = False) -> Any:
    return jax.eval_shape(lambda k: gpt_init(config, k, stacked=stacked), jax.random.key(0))


def _trace(fun: Any, *args: Any, **kwargs: Any) -> Any:
    return jax.eval_shape(functools.partial(fun, **kwargs), *args)


def test_layer_count_must_match_the_config() -> None:
    deeper = GPTConfig(vocab_size=32, seq_len=8, d_model=16, n_heads=2, n_layers=3)
    with pytest.raises(ModelError, match=r"gpt_apply: params\['blocks'\] holds 2 layers but "):
        _trace(gpt_apply, _abstract(), TOKENS, config=deeper)
    with pytest.raises(ModelError, match=r"stacked blocks have leading dims \[2\] but config"):
        _trace(gpt_apply, _abstract(stacked=True), TOKENS, config=deeper)


def test_wrong_shapes_name_the_parameter_path() -> None:
    params = _abstract()
    params["blocks"][1]["mlp"]["up"]["kernel"] = jax.ShapeDtypeStruct((16, 32), jnp.float32)
    with pytest.raises(
        ModelError,
        match=r"gpt_apply: parameter blocks/1/mlp/up/kernel has shape \(16, 32\), "
        r"expected \(16, 64\)",
    ):
        _trace(gpt_apply, params, TOKENS, config=CONFIG)
    wider = GPTConfig(vocab_size=64, seq_len=8, d_model=16, n_heads=2, n_layers=2)
    with pytest.raises(ModelError, match=r"parameter embed/embedding has shape \(32, 16\), exp"):
        _trace(gpt_apply, _abstract(), TOKENS, config=wider)
    with pytest.raises(ModelError, match=r"gpt_head: parameter head/kernel has shape \(16, 32\)"):
        _trace(gpt_head, _abstract(), X, config=wider)


def test_missing_and_unexpected_parameters_are_listed() -> None:
    params = _abstract()
    del params["blocks"][0]["attn"]["q"]["bias"]
    params["blocks"][0]["attn"]["qkv"] = params["blocks"][0]["attn"]["k"]
    with pytest.raises(
        ModelError,
        match=r"missing \['blocks/0/attn/q/bias'\], unexpected \['blocks/0/attn/qkv/bias', "
        r"'blocks/0/attn/qkv/kernel'\]",
    ):
        _trace(gpt_apply, params, TOKENS, config=CONFIG)
    no_head = {k: v for k, v in _abstract().items() if k != "head"}
    with pytest.raises(ModelError, match=r"gpt_head: parameters at 'head' must be a dict, got No"):
        _trace(gpt_head, no_head, X, config=CONFIG)


def test_stacked_leaves_need_one_leading_dim() -> None:
    blocks = _abstract(stacked=True)["blocks"]
    blocks["ln1"]["scale"] = jax.ShapeDtypeStruct((3, 16), jnp.float32)
    with pytest.raises(
        ModelError,
        match=r"gpt_blocks: stacked parameters disagree on the leading layer dim: "
        r"\{'blocks/ln1/scale': 3\}, but the other leaves have L=2",
    ):
        _trace(gpt_blocks, blocks, X, config=CONFIG)
    with pytest.raises(
        ModelError,
        match=r"gpt_block: parameter blocks/<i>/ln1/scale has shape \(2, 16\), expected \(16,\) "
        r"for this config. It has an extra leading dim",
    ):
        _trace(gpt_block, _abstract(stacked=True)["blocks"], X, config=CONFIG)
    with pytest.raises(
        ModelError,
        match=r"gpt_blocks: stacked parameters need a leading \[L\] layer dim, but 16 leaves "
        r"lack it \(e.g. blocks/ln1/scale has shape \(16,\)\)",
    ):
        _trace(gpt_blocks, _abstract()["blocks"][0], X, config=CONFIG)


@pytest.mark.parametrize(
    ("tokens", "match"),
    [
        (jax.ShapeDtypeStruct((8,), jnp.int32), r"tokens must be \[batch, seq\] token ids, got "),
        (jax.ShapeDtypeStruct((2, 8), jnp.float32), r"must have an integer dtype \(int32\), got f"),
        (jax.ShapeDtypeStruct((2, 9), jnp.int32), r"seq=9 positions but config.seq_len=8"),
    ],
)
def test_bad_tokens(tokens: Any, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        _trace(gpt_apply, _abstract(), tokens, config=CONFIG)
    with pytest.raises(ModelError, match=match):
        _trace(gpt_embed, _abstract(), tokens, config=CONFIG)


@pytest.mark.parametrize(
    "x", [jax.ShapeDtypeStruct((2, 8, 8), jnp.float32), jax.ShapeDtypeStruct((8, 16), jnp.float32)]
)
def test_bad_activations(x: Any) -> None:
    params = _abstract()
    with pytest.raises(ModelError, match=r"gpt_block: x must be \[batch, seq <= 8, d_model=16\]"):
        _trace(gpt_block, params["blocks"][0], x, config=CONFIG)
    with pytest.raises(ModelError, match=r"gpt_head: x must be \[batch, seq <= 8, d_model=16\]"):
        _trace(gpt_head, params, x, config=CONFIG)


def test_bad_dtypes_and_configs() -> None:
    with pytest.raises(ModelError, match=r"gpt_apply: compute_dtype=.*int32.* not a floating"):
        _trace(gpt_apply, _abstract(), TOKENS, config=CONFIG, compute_dtype=jnp.int32)
    with pytest.raises(ModelError, match=r"gpt_init: dtype='float99' is not a dtype"):
        gpt_init(CONFIG, jax.random.key(0), dtype="float99")
    with pytest.raises(ModelError, match=r"gpt_init: config must be a GPTConfig, got dict"):
        gpt_init({"d_model": 16}, jax.random.key(0))  # type: ignore[arg-type]


def test_layout_conversions_reject_the_wrong_layout() -> None:
    params, stacked = _abstract(), _abstract(stacked=True)
    with pytest.raises(ModelError, match=r"stack_blocks: params\['blocks'\] is already stacked"):
        stack_blocks(stacked)
    with pytest.raises(ModelError, match=r"unstack_blocks: params\['blocks'\] is already a layer"):
        unstack_blocks(params)
    with pytest.raises(ModelError, match=r"stack_blocks: params\['blocks'\] is an empty list"):
        stack_blocks({**params, "blocks": []})
    odd = copy.deepcopy(params)
    del odd["blocks"][1]["ln2"]
    with pytest.raises(ModelError, match=r"stack_blocks: blocks/1 has parameter paths \["):
        stack_blocks(odd)
    odd = copy.deepcopy(params)
    odd["blocks"][1]["ln2"]["bias"] = jax.ShapeDtypeStruct((8,), jnp.float32)
    with pytest.raises(ModelError, match=r"blocks/1 has a leaf of shape \(8,\) float32 where blo"):
        stack_blocks(odd)
    ragged = copy.deepcopy(stacked)
    ragged["blocks"]["ln2"]["bias"] = jax.ShapeDtypeStruct((3, 16), jnp.float32)
    with pytest.raises(ModelError, match=r"unstack_blocks: stacked leaves have leading dims \[2, "):
        unstack_blocks(ragged)
    with pytest.raises(ModelError, match=r"GPT parameters need a 'blocks' entry"):
        is_stacked({"embed": {}})
    with pytest.raises(ModelError, match=r"'blocks' must be a list of block dicts or a stacked d"):
        is_stacked({"blocks": 3})
