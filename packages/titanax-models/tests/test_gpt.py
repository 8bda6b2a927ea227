"""The reference GPT: CONTRACTS A naming, both layouts, numerics against numpy, dropout, pieces.

Compilation dominates at these sizes, so each test group runs one jitted program (``fast_jit``
from conftest.py) and shape/dtype/structure checks trace without compiling.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from titanax.models import (
    GPTConfig,
    gpt_apply,
    gpt_block,
    gpt_blocks,
    gpt_embed,
    gpt_head,
    gpt_init,
    gpt_loss,
    is_stacked,
    stack_blocks,
    unstack_blocks,
)
from titanax.testing import assert_trees_allclose, assert_trees_equal

CONFIG = GPTConfig(vocab_size=32, seq_len=8, d_model=16, n_heads=2, n_layers=2)
DROPOUT = dataclasses.replace(CONFIG, dropout=0.5)
FastJit = Callable[..., Any]


# ---- an independent float64 numpy forward (GPT-2 as described), for the numerics tests ----


def _np(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _np(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_np(v) for v in tree]
    return np.asarray(tree, dtype=np.float64)


def np_layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    sigma2 = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(sigma2 + 1e-5) * scale + bias


def np_gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def np_block(p: dict[str, Any], x: np.ndarray, n_heads: int) -> np.ndarray:
    """One pre-norm block, head by head with explicit loops over heads."""
    p = _np(p)
    x = np.asarray(x, np.float64)
    _, seq, d = x.shape
    hd = d // n_heads
    h = np_layer_norm(x, p["ln1"]["scale"], p["ln1"]["bias"])
    a = p["attn"]
    q = h @ a["q"]["kernel"] + a["q"]["bias"]
    k = h @ a["k"]["kernel"] + a["k"]["bias"]
    v = h @ a["v"]["kernel"] + a["v"]["bias"]
    ctx = np.zeros_like(x)
    future = np.triu(np.ones((seq, seq), dtype=bool), k=1)
    for head in range(n_heads):
        cols = slice(head * hd, (head + 1) * hd)
        s = q[:, :, cols] @ np.swapaxes(k[:, :, cols], 1, 2) / np.sqrt(hd)  # [b, q, k]
        s = np.where(future, -np.inf, s)
        w = np.exp(s - s.max(axis=-1, keepdims=True))
        w = w / w.sum(axis=-1, keepdims=True)
        ctx[:, :, cols] = w @ v[:, :, cols]
    x = x + ctx @ a["out"]["kernel"] + a["out"]["bias"]
    h = np_layer_norm(x, p["ln2"]["scale"], p["ln2"]["bias"])
    m = p["mlp"]
    u = np_gelu(h @ m["up"]["kernel"] + m["up"]["bias"])
    return x + u @ m["down"]["kernel"] + m["down"]["bias"]


def np_gpt(params: dict[str, Any], tokens: np.ndarray, n_heads: int) -> np.ndarray:
    """Logits [batch, seq, vocab] of the layer-list layout."""
    p = _np({k: v for k, v in params.items() if k != "blocks"})
    tokens = np.asarray(tokens)
    x = p["embed"]["embedding"][tokens] + p["pos_embed"]["embedding"][: tokens.shape[1]]
    for blk in params["blocks"]:
        x = np_block(blk, x, n_heads)
    x = np_layer_norm(x, p["ln_f"]["scale"], p["ln_f"]["bias"])
    return x @ p["head"]["kernel"]


# ---- fixtures ----


@pytest.fixture(scope="module")
def layouts(fast_jit: FastJit) -> tuple[dict[str, Any], dict[str, Any]]:
    both = fast_jit(lambda k: (gpt_init(CONFIG, k), gpt_init(CONFIG, k, stacked=True)))
    return both(jax.random.key(0))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def params(layouts: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    return layouts[0]


@pytest.fixture(scope="module")
def stacked(layouts: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    return layouts[1]


@pytest.fixture(scope="module")
def tokens() -> jax.Array:
    rng = np.random.default_rng(1)
    return jnp.asarray(rng.integers(0, CONFIG.vocab_size, (2, CONFIG.seq_len)), jnp.int32)


def _paths(tree: Any) -> dict[str, tuple[int, ...]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
        for path, leaf in flat
    }


def _layer(stacked_blocks: Any, i: int) -> Any:
    return jax.tree.map(lambda a: np.asarray(a)[i], stacked_blocks)


# ---- parameters ----


def test_layer_list_paths_and_shapes_follow_contracts_a(params: dict[str, Any]) -> None:
    d, f, v, s = 16, 64, 32, 8
    expected = {"embed/embedding": (v, d), "pos_embed/embedding": (s, d)}
    for i in range(2):
        b = f"blocks/{i}/"
        expected |= {b + "ln1/scale": (d,), b + "ln1/bias": (d,)}
        for name in ("q", "k", "v", "out"):
            expected |= {b + f"attn/{name}/kernel": (d, d), b + f"attn/{name}/bias": (d,)}
        expected |= {b + "ln2/scale": (d,), b + "ln2/bias": (d,)}
        expected |= {b + "mlp/up/kernel": (d, f), b + "mlp/up/bias": (f,)}
        expected |= {b + "mlp/down/kernel": (f, d), b + "mlp/down/bias": (d,)}
    expected |= {"ln_f/scale": (d,), "ln_f/bias": (d,), "head/kernel": (d, v)}
    assert _paths(params) == expected
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert isinstance(params["blocks"], list)
    assert not is_stacked(params)


def test_stacked_layout_has_a_leading_layer_dim(
    params: dict[str, Any], stacked: dict[str, Any]
) -> None:
    listed = _paths(params)
    expected = {p: s for p, s in listed.items() if not p.startswith("blocks/")}
    expected |= {
        "blocks/" + p.removeprefix("blocks/0/"): (2, *s)
        for p, s in listed.items()
        if p.startswith("blocks/0/")
    }
    assert _paths(stacked) == expected
    assert is_stacked(stacked)


def test_init_values_and_dtype(params: dict[str, Any]) -> None:
    blk = params["blocks"][0]
    np.testing.assert_array_equal(blk["ln1"]["scale"], np.ones(16))
    np.testing.assert_array_equal(blk["attn"]["q"]["bias"], np.zeros(16))
    np.testing.assert_array_equal(params["ln_f"]["bias"], np.zeros(16))
    assert 0.015 < float(np.std(params["embed"]["embedding"])) < 0.025
    assert 0.016 < float(np.std(blk["mlp"]["up"]["kernel"])) < 0.024
    # residual projections are scaled by 1/sqrt(2 * n_layers) = 1/2
    assert 0.008 < float(np.std(blk["mlp"]["down"]["kernel"])) < 0.012
    kernels = [blk["attn"][n]["kernel"] for n in ("q", "k", "v")]
    kernels += [params["blocks"][1]["attn"]["q"]["kernel"], params["head"]["kernel"][:, :16]]
    for i, a in enumerate(kernels):  # every kernel is its own draw
        for b in kernels[i + 1 :]:
            assert abs(float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])) < 0.2
    half = jax.eval_shape(lambda k: gpt_init(CONFIG, k, dtype=jnp.bfloat16), jax.random.key(0))
    assert {leaf.dtype for leaf in jax.tree.leaves(half)} == {jnp.dtype(jnp.bfloat16)}


def test_stacked_init_equals_the_layer_list(
    params: dict[str, Any], stacked: dict[str, Any], fast_jit: FastJit
) -> None:
    for i in range(CONFIG.n_layers):
        assert_trees_equal(_layer(stacked["blocks"], i), params["blocks"][i])
    restacked, unstacked = fast_jit(lambda p, s: (stack_blocks(p), unstack_blocks(s)))(
        params, stacked
    )
    assert_trees_equal(restacked, stacked)
    assert_trees_equal(unstacked, params)
    tiny = {"blocks": [{"w": np.zeros(2)}, {"w": np.ones(2)}], "other": object()}
    assert stack_blocks(tiny)["other"] is tiny["other"]  # non-block entries are passed through
    np.testing.assert_array_equal(stack_blocks(tiny)["blocks"]["w"], [[0, 0], [1, 1]])


# ---- forward ----


@pytest.fixture(scope="module")
def apply(fast_jit: FastJit) -> Any:
    return fast_jit(gpt_apply, static_argnames=("config", "train", "compute_dtype"))


def test_shapes_and_dtypes(params: dict[str, Any], stacked: dict[str, Any]) -> None:
    tokens = jnp.zeros((3, 5), jnp.int32)  # seq < seq_len is allowed
    for p in (params, stacked):
        out = jax.eval_shape(functools.partial(gpt_apply, config=CONFIG), p, tokens)
        assert (out.shape, out.dtype) == ((3, 5, 32), jnp.float32)
        low = jax.eval_shape(
            functools.partial(gpt_apply, config=CONFIG, compute_dtype=jnp.bfloat16), p, tokens
        )
        assert (low.shape, low.dtype) == ((3, 5, 32), jnp.float32)
    x = jax.eval_shape(functools.partial(gpt_embed, config=CONFIG), params, tokens)
    assert (x.shape, x.dtype) == ((3, 5, 16), jnp.float32)


def test_matches_the_numpy_reference(
    params: dict[str, Any], tokens: jax.Array, apply: Any, fast_jit: FastJit
) -> None:
    x = np.random.default_rng(2).normal(size=(2, 8, 16)).astype(np.float32)
    out = fast_jit(functools.partial(gpt_block, config=CONFIG))(params["blocks"][1], x)
    np.testing.assert_allclose(out, np_block(params["blocks"][1], x, 2), rtol=1e-5, atol=1e-5)
    logits = apply(params, tokens, config=CONFIG)
    np.testing.assert_allclose(logits, np_gpt(params, tokens, 2), rtol=1e-4, atol=1e-5)
    short = np_gpt(params, tokens[:, :5], 2)  # a shorter sequence uses the first positions
    np.testing.assert_allclose(short, np.asarray(logits)[:, :5], rtol=1e-4, atol=1e-5)


def test_causal_masking(params: dict[str, Any], tokens: jax.Array, apply: Any) -> None:
    changed = np.array(tokens)  # int32, like tokens: the same compiled program
    changed[:, 5] = (changed[:, 5] + 1) % CONFIG.vocab_size
    before = apply(params, tokens, config=CONFIG)
    after = apply(params, changed, config=CONFIG)
    np.testing.assert_array_equal(before[:, :5], after[:, :5])
    assert float(jnp.max(jnp.abs(before[:, 5:] - after[:, 5:]))) > 1e-4


def test_stacked_and_layer_list_agree_in_gradients(
    params: dict[str, Any], stacked: dict[str, Any], fast_jit: FastJit
) -> None:
    # The layouts differ only in how the blocks run (a Python loop of gpt_block vs a scan in
    # gpt_blocks; embedding and head are the same code), so compare there: gradients with respect
    # to every block parameter and to the input activations (what a pipeline stage sends back).
    # Forward values of the whole model are compared in test_dropout_is_deterministic_given_the_key.
    x = np.random.default_rng(7).normal(size=(2, 8, 16)).astype(np.float32)

    def loss_list(blocks: list[Any], x: jax.Array) -> jax.Array:
        for block in blocks:
            x = gpt_block(block, x, config=CONFIG)
        return jnp.mean(jnp.square(x))

    def loss_stacked(blocks: Any, x: jax.Array) -> jax.Array:
        return jnp.mean(jnp.square(gpt_blocks(blocks, x, config=CONFIG)))

    grad = functools.partial(jax.value_and_grad, argnums=(0, 1))
    (l_list, (g_list, gx_list)), (l_stacked, (g_stacked, gx_stacked)) = fast_jit(
        lambda a, b, x: (grad(loss_list)(a, x), grad(loss_stacked)(b, x))
    )(params["blocks"], stacked["blocks"], x)
    np.testing.assert_allclose(l_stacked, l_list, rtol=1e-6)
    np.testing.assert_allclose(gx_stacked, gx_list, rtol=1e-5, atol=1e-8)
    for i in range(CONFIG.n_layers):
        assert_trees_allclose(_layer(g_stacked, i), g_list[i], rtol=1e-5, atol=1e-8)
    assert float(jnp.abs(g_list[0]["attn"]["q"]["kernel"]).max()) > 0


def test_compute_dtype_bfloat16(params: dict[str, Any], tokens: jax.Array, apply: Any) -> None:
    low = apply(params, tokens, config=CONFIG, compute_dtype="bfloat16")
    ref = apply(params, tokens, config=CONFIG)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, ref, atol=0.05)  # bf16: 8 mantissa bits
    assert not np.array_equal(low, ref)
    x = jax.eval_shape(
        functools.partial(gpt_embed, config=CONFIG, compute_dtype=jnp.bfloat16), params, tokens
    )
    assert x.dtype == jnp.bfloat16
    block = params["blocks"][0]
    y = jax.eval_shape(
        functools.partial(gpt_block, config=CONFIG, compute_dtype=jnp.bfloat16), block, x
    )
    assert y.dtype == jnp.bfloat16
    # without compute_dtype nothing is cast: bf16 activations meet f32 parameters -> f32
    assert jax.eval_shape(functools.partial(gpt_block, config=CONFIG), block, x).dtype == (
        jnp.float32
    )
    jaxpr = str(
        jax.make_jaxpr(functools.partial(gpt_block, config=CONFIG, compute_dtype="bfloat16"))(
            block, x
        )
    )
    assert "preferred_element_type=float32" in jaxpr  # attention scores accumulate in f32


# ---- dropout and the pipeline pieces ----


def _dropout_run(
    params: dict[str, Any], stacked: dict[str, Any], tokens: jax.Array, key: jax.Array
) -> dict[str, jax.Array]:
    k_embed, k_blocks = jax.random.split(key)
    x = gpt_embed(stacked, tokens, config=DROPOUT, key=k_embed, train=True)
    for start in (0, 1):  # two pipeline stages of one layer each, at their global offsets
        stage = jax.tree.map(lambda a, s=start: a[s : s + 1], stacked["blocks"])
        offset = jnp.asarray(start, jnp.int32) + 0 * tokens[0, 0]  # a traced offset
        x = gpt_blocks(stage, x, config=DROPOUT, key=k_blocks, train=True, layer_offset=offset)
    return {
        "list": gpt_apply(params, tokens, config=DROPOUT, key=key, train=True),
        "stacked": gpt_apply(stacked, tokens, config=DROPOUT, key=key, train=True),
        "pieces": gpt_head(stacked, x, config=DROPOUT),
        "embed_clean": gpt_embed(params, tokens, config=DROPOUT),
        "embed_dropped": gpt_embed(params, tokens, config=DROPOUT, key=key, train=True),
    }


@pytest.fixture(scope="module")
def dropped(
    params: dict[str, Any], stacked: dict[str, Any], tokens: jax.Array, fast_jit: FastJit
) -> list[dict[str, np.ndarray]]:
    run = fast_jit(_dropout_run)
    keys = [jax.random.key(4), jax.random.key(4), jax.random.key(5)]
    return [jax.tree.map(np.asarray, run(params, stacked, tokens, k)) for k in keys]


def test_dropout_is_deterministic_given_the_key(dropped: list[dict[str, np.ndarray]]) -> None:
    first, again, other = dropped
    assert_trees_equal(first, again)
    assert not np.allclose(first["list"], other["list"])
    # the stacked layout draws the same masks (fold_in of the global layer index)
    np.testing.assert_allclose(first["stacked"], first["list"], rtol=1e-6, atol=1e-6)


def test_pieces_compose_to_gpt_apply(dropped: list[dict[str, np.ndarray]]) -> None:
    np.testing.assert_allclose(dropped[0]["pieces"], dropped[0]["stacked"], rtol=1e-6, atol=1e-6)


def test_dropout_is_off_without_train_or_key(params: dict[str, Any], tokens: jax.Array) -> None:
    key = jax.random.key(4)

    def program(config: GPTConfig, **kwargs: Any) -> str:
        run = functools.partial(gpt_apply, config=config, **kwargs)
        return str(jax.make_jaxpr(run)(params, tokens))

    clean = program(CONFIG)
    assert "random_bits" not in clean
    # the same program as no dropout at all, so the same values
    assert program(DROPOUT, key=key) == clean  # train=False
    assert program(DROPOUT, train=True) == clean  # no key
    assert program(CONFIG, key=key, train=True) == clean  # rate 0
    assert "random_bits" in program(DROPOUT, key=key, train=True)


def test_embedding_dropout_zeroes_and_rescales(dropped: list[dict[str, np.ndarray]]) -> None:
    clean, kept_or_zero = dropped[0]["embed_clean"], dropped[0]["embed_dropped"]
    kept = kept_or_zero != 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(kept_or_zero[kept], 2 * clean[kept], rtol=1e-6)


# ---- remat names ----


def test_activations_are_named_for_remat_policies(params: dict[str, Any]) -> None:
    x = jnp.zeros((1, 4, 16))
    jaxpr = str(jax.make_jaxpr(lambda p, x: gpt_block(p, x, config=CONFIG))(params["blocks"][0], x))
    for name in ("attn_out", "mlp_hidden", "block_out"):
        assert f"name={name}" in jaxpr


@pytest.mark.parametrize("stacked", [False, True])
def test_remat_keeps_values_and_gradients(stacked: bool) -> None:
    config = GPTConfig(vocab_size=32, seq_len=8, d_model=16, n_heads=2, n_layers=2)
    params = gpt_init(config, jax.random.key(0), stacked=stacked)
    tokens = jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % 32
    batch = {"inputs": tokens, "targets": (tokens + 1) % 32}
    calls: list[int] = []

    def remat(fn):  # type: ignore[no-untyped-def]
        calls.append(1)
        policy = jax.checkpoint_policies.save_only_these_names("attn_out")
        return jax.checkpoint(fn, policy=policy)

    plain = jax.value_and_grad(lambda p: gpt_loss(p, batch, config=config))(params)
    rematted = jax.value_and_grad(lambda p: gpt_loss(p, batch, config=config, remat=remat))(params)
    assert calls  # the wrapper was applied to the layer function
    np.testing.assert_allclose(float(rematted[0]), float(plain[0]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(rematted[1]), jax.tree.leaves(plain[1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    jaxpr = str(jax.make_jaxpr(lambda p: gpt_loss(p, batch, config=config, remat=remat))(params))
    assert "checkpoint" in jaxpr or "remat" in jaxpr
