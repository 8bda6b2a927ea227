"""The reference GPT forward pass and its pipeline stage pieces.

``gpt_apply = gpt_head . (gpt_block per layer | gpt_blocks) . gpt_embed``, single-device JAX
over the parameters of :func:`~titanax.models.gpt_init` (either layout). The pieces are public
so a pipeline can run each stage on its own devices: the first stage embeds, every stage runs
its slice of the stacked blocks, the last applies the head.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from titanax.models._checks import check_tree_shapes, resolve_dtype
from titanax.models._errors import ModelError
from titanax.models._gpt_config import GPTConfig, block_param_shapes, top_param_shapes
from titanax.models._gpt_params import DTypeLike, is_stacked, leading_dims
from titanax.models._layers import cast, dense, dropout, layer_norm

Remat: TypeAlias = Callable[[Callable[..., jax.Array]], Callable[..., jax.Array]]
"""Wraps one layer's function ``fn(params, x, key)``: e.g. ``jax.checkpoint`` with a policy, or
``TrainState.remat`` (the step's activation-checkpointing policy)."""

__all__ = ["gpt_apply", "gpt_block", "gpt_blocks", "gpt_embed", "gpt_head"]

logger = logging.getLogger(__name__)


def _check_tokens(api: str, tokens: jax.Array, config: GPTConfig) -> None:
    shape = tuple(getattr(tokens, "shape", ()))
    dtype = getattr(tokens, "dtype", None)
    if len(shape) != 2:
        raise ModelError(
            f"{api}: tokens must be [batch, seq] token ids, got shape {shape}; add a batch dim "
            "with tokens[None] for one sequence."
        )
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise ModelError(f"{api}: tokens must have an integer dtype (int32), got {dtype}.")
    if shape[1] > config.seq_len:
        raise ModelError(
            f"{api}: tokens have seq={shape[1]} positions but config.seq_len={config.seq_len} "
            "(rows of the positional embedding); truncate the input or raise seq_len."
        )


def _check_activations(api: str, x: jax.Array, config: GPTConfig) -> None:
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 3 or shape[2] != config.d_model or shape[1] > config.seq_len:
        raise ModelError(
            f"{api}: x must be [batch, seq <= {config.seq_len}, d_model={config.d_model}], "
            f"got shape {shape}."
        )


def _split(key: jax.Array | None, n: int) -> list[jax.Array | None]:
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))


def _dropout(
    config: GPTConfig, key: jax.Array | None, train: bool
) -> tuple[float, jax.Array | None]:
    """(rate, key) of this call: ``(0.0, None)`` unless dropout really runs, so that a call
    without dropout traces no PRNG operation at all."""
    if train and key is None and config.dropout > 0:
        logger.debug("GPT: train=True without a key; dropout is off")
    if not train or key is None or config.dropout == 0.0:
        return 0.0, None
    return config.dropout, key


def _embed(
    api: str,
    params: Mapping[str, Any],
    tokens: jax.Array,
    *,
    config: GPTConfig,
    key: jax.Array | None,
    rate: float,
    dtype: np.dtype[Any] | None,
) -> jax.Array:
    _check_tokens(api, tokens, config)
    shapes = top_param_shapes(config)
    for name in ("embed", "pos_embed"):
        check_tree_shapes(
            api,
            params.get(name) if isinstance(params, Mapping) else None,
            {"embedding": shapes[f"{name}/embedding"]},
            prefix=name,
        )
    seq = tokens.shape[1]
    x = jnp.take(params["embed"]["embedding"], tokens, axis=0)
    x = cast(x + params["pos_embed"]["embedding"][:seq], dtype)
    return dropout(x, rate=rate, key=key)


def gpt_embed(
    params: Mapping[str, Any],
    tokens: jax.Array,
    *,
    config: GPTConfig,
    key: jax.Array | None = None,
    train: bool = False,
    compute_dtype: DTypeLike = None,
) -> jax.Array:
    """Token plus learned positional embedding (the first pipeline stage's prologue).

    Args:
      params: the GPT parameters (only ``embed`` and ``pos_embed`` are read).
      tokens: ``[batch, seq]`` integer token ids, ``seq <= config.seq_len``. Ids
        ``>= vocab_size`` give NaN embeddings (``jnp.take``'s fill mode), so they show up in the
        loss instead of silently reading another row; negative ids index from the end, as in
        NumPy.
      config: the model.
      key: PRNG key for embedding dropout (``gpt_apply`` passes the first half of its key
        split).
      train: apply dropout (needs ``key`` and ``config.dropout > 0``).
      compute_dtype: dtype of the returned activations (default: the parameters' dtype).

    Returns:
      ``[batch, seq, d_model]`` activations.

    Raises:
      ModelError: tokens of the wrong rank, dtype or length; embedding tables of the wrong shape.
    """
    api = "gpt_embed"
    rate, key = _dropout(config, key, train)
    return _embed(
        api,
        params,
        tokens,
        config=config,
        key=key,
        rate=rate,
        dtype=resolve_dtype(api, compute_dtype),
    )


def _block(
    p: Mapping[str, Any],
    x: jax.Array,
    *,
    config: GPTConfig,
    key: jax.Array | None,
    rate: float,
    dtype: np.dtype[Any] | None,
) -> jax.Array:
    x = cast(x, dtype)
    batch, seq, d = x.shape
    heads, head_dim = config.n_heads, config.head_dim
    k_attn, k_mlp = _split(key, 2)

    # Attention: separate q/k/v parameters, heads contiguous on the out dim, applied as one
    # [d, 3, d] matmul. Stacking on a new dim keeps a column-parallel (head) sharding local, and
    # the backward then forms one partial input gradient instead of three: one all-reduce over
    # the tensor axis per block, as in Megatron's fused QKV (Shoeybi et al. 2019).
    h = cast(layer_norm(p["ln1"], x), dtype)
    attn = p["attn"]
    qkv_kernel = jnp.stack([cast(attn[n]["kernel"], dtype) for n in ("q", "k", "v")], axis=1)
    qkv = jnp.einsum("bsd,dtk->bstk", h, qkv_kernel)
    q, k, v = (
        (
            qkv[:, :, i] + cast(attn[n]["bias"], dtype) if "bias" in attn[n] else qkv[:, :, i]
        ).reshape(batch, seq, heads, head_dim)
        for i, n in enumerate(("q", "k", "v"))
    )
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.float32(math.sqrt(head_dim))
    causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))
    scores = jnp.where(causal, scores, jnp.float32(np.finfo(np.float32).min))
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, seq, d)
    attn_out = checkpoint_name(dense(attn["out"], ctx, dtype=dtype), "attn_out")
    x = x + dropout(attn_out, rate=rate, key=k_attn)

    # MLP.
    h = layer_norm(p["ln2"], x)
    hidden = jax.nn.gelu(dense(p["mlp"]["up"], h, dtype=dtype), approximate=True)
    hidden = checkpoint_name(hidden, "mlp_hidden")
    x = x + dropout(dense(p["mlp"]["down"], hidden, dtype=dtype), rate=rate, key=k_mlp)
    out: jax.Array = checkpoint_name(x, "block_out")
    return out


def _block_fn(
    config: GPTConfig, rate: float, dtype: np.dtype[Any] | None, remat: Remat | None
) -> Callable[[Mapping[str, Any], jax.Array, jax.Array | None], jax.Array]:
    """One layer as ``fn(params, x, key)``, wrapped by ``remat`` (e.g. ``jax.checkpoint``)."""

    def fn(p: Mapping[str, Any], x: jax.Array, key: jax.Array | None) -> jax.Array:
        return _block(p, x, config=config, key=key, rate=rate, dtype=dtype)

    return fn if remat is None else remat(fn)


def gpt_block(
    block_params: Mapping[str, Any],
    x: jax.Array,
    *,
    config: GPTConfig,
    key: jax.Array | None = None,
    train: bool = False,
    compute_dtype: DTypeLike = None,
) -> jax.Array:
    """One pre-norm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``.

    Causal multi-head self-attention with separate q/k/v projections (scores, mask and softmax
    in float32), a GELU (tanh approximation) MLP, dropout on both residual branches. Names
    activations for remat policies with ``jax.ad_checkpoint.checkpoint_name``: ``"attn_out"``
    (attention output projection, ``[batch, seq, d_model]``), ``"mlp_hidden"`` (GELU output,
    ``[batch, seq, d_ff]``), ``"block_out"`` (the block's output).

    Args:
      block_params: one block's parameters (``ln1``, ``attn/{q,k,v,out}``, ``ln2``,
        ``mlp/{up,down}``), no leading layer dim.
      x: ``[batch, seq, d_model]`` activations.
      config: the model.
      key: this layer's dropout key (``gpt_apply`` uses ``fold_in(k_blocks, layer_index)``); it
        is split into the attention and MLP branch keys.
      train: apply dropout (needs ``key`` and ``config.dropout > 0``).
      compute_dtype: cast parameters and activations to this dtype for the matmuls (default:
        no cast).

    Returns:
      ``[batch, seq, d_model]`` in ``compute_dtype`` (or ``x.dtype``).

    Raises:
      ModelError: parameters whose paths or shapes do not match ``config``; ``x`` not
        ``[batch, seq, d_model]``.

    References:
      Radford et al. 2019 (GPT-2); Vaswani et al. 2017; ``jax.ad_checkpoint.checkpoint_name``.
    """
    api = "gpt_block"
    check_tree_shapes(api, block_params, block_param_shapes(config), prefix="blocks/<i>")
    _check_activations(api, x, config)
    dtype = resolve_dtype(api, compute_dtype)
    rate, key = _dropout(config, key, train)
    return _block(block_params, x, config=config, key=key, rate=rate, dtype=dtype)


def _scan_blocks(
    api: str,
    stacked: Mapping[str, Any],
    x: jax.Array,
    *,
    config: GPTConfig,
    key: jax.Array | None,
    rate: float,
    dtype: np.dtype[Any] | None,
    layer_offset: int | jax.Array,
    remat: Remat | None = None,
) -> jax.Array:
    check_tree_shapes(api, stacked, block_param_shapes(config), prefix="blocks", leading=0)
    _check_activations(api, x, config)
    n = jax.tree.leaves(stacked)[0].shape[0]
    layer_ids = jnp.arange(n, dtype=jnp.int32) + jnp.asarray(layer_offset, jnp.int32)

    block_fn = _block_fn(config, rate, dtype, remat)

    def body(carry: jax.Array, xs: tuple[Any, jax.Array]) -> tuple[jax.Array, None]:
        block, layer = xs
        layer_key = None if key is None else jax.random.fold_in(key, layer)
        return block_fn(block, carry, layer_key), None

    out, _ = jax.lax.scan(body, cast(x, dtype), (stacked, layer_ids))
    return out


def gpt_blocks(
    stacked_block_params: Mapping[str, Any],
    x: jax.Array,
    *,
    config: GPTConfig,
    key: jax.Array | None = None,
    train: bool = False,
    compute_dtype: DTypeLike = None,
    layer_offset: int | jax.Array = 0,
    remat: Remat | None = None,
) -> jax.Array:
    """Runs ``L`` stacked blocks in order with ``jax.lax.scan`` (one pipeline stage).

    Layer ``j`` of the stack is global layer ``layer_offset + j`` and gets the dropout key
    ``jax.random.fold_in(key, layer_offset + j)``, so a stage holding layers ``[a, b)`` with
    ``layer_offset=a`` reproduces exactly those layers of the unsplit model.

    Args:
      stacked_block_params: block parameters with a leading ``[L]`` dim on every leaf (a slice
        of the stacked layout's ``params["blocks"]``); ``L`` may differ from ``n_layers``.
      x: ``[batch, seq, d_model]``.
      config: the model.
      key: the blocks' dropout key (``gpt_apply`` passes the second half of its key split).
      train: apply dropout.
      compute_dtype: as in :func:`gpt_block`.
      layer_offset: global index of the first layer (an int, or an int32 scalar computed e.g.
        from ``jax.lax.axis_index`` in a pipeline stage).
      remat: wraps each layer's function (activation checkpointing), e.g. ``state.remat``.

    Returns:
      ``[batch, seq, d_model]``.

    Raises:
      ModelError: leaves without a common leading dim, wrong paths or shapes, bad ``x``.

    References:
      ``jax.lax.scan``; docs/concepts/pipeline.md (stages over the stacked layer dim).
    """
    api = "gpt_blocks"
    rate, key = _dropout(config, key, train)
    return _scan_blocks(
        api,
        stacked_block_params,
        x,
        config=config,
        key=key,
        rate=rate,
        dtype=resolve_dtype(api, compute_dtype),
        layer_offset=layer_offset,
        remat=remat,
    )


def _head(
    api: str,
    params: Mapping[str, Any],
    x: jax.Array,
    *,
    config: GPTConfig,
    dtype: np.dtype[Any] | None,
) -> jax.Array:
    _check_activations(api, x, config)
    shapes = top_param_shapes(config)
    for name, leaves in (("ln_f", ("scale", "bias")), ("head", ("kernel",))):
        check_tree_shapes(
            api,
            params.get(name) if isinstance(params, Mapping) else None,
            {leaf: shapes[f"{name}/{leaf}"] for leaf in leaves},
            prefix=name,
        )
    h = layer_norm(params["ln_f"], cast(x, dtype))
    kernel = cast(params["head"]["kernel"], dtype)
    logits = jnp.einsum("bsd,dv->bsv", h, kernel, preferred_element_type=jnp.float32)
    return logits.astype(jnp.float32)


def gpt_head(
    params: Mapping[str, Any],
    x: jax.Array,
    *,
    config: GPTConfig,
    compute_dtype: DTypeLike = None,
) -> jax.Array:
    """Final LayerNorm and the untied LM head (the last pipeline stage's epilogue).

    Args:
      params: the GPT parameters (only ``ln_f`` and ``head`` are read).
      x: ``[batch, seq, d_model]``.
      config: the model.
      compute_dtype: dtype of the head matmul's operands (accumulated in float32).

    Returns:
      ``[batch, seq, vocab_size]`` float32 logits.

    Raises:
      ModelError: ``ln_f``/``head`` of the wrong shape, bad ``x``.
    """
    api = "gpt_head"
    return _head(api, params, x, config=config, dtype=resolve_dtype(api, compute_dtype))


def gpt_apply(
    params: Mapping[str, Any],
    tokens: jax.Array,
    *,
    config: GPTConfig,
    key: jax.Array | None = None,
    train: bool = False,
    compute_dtype: DTypeLike = None,
    remat: Remat | None = None,
) -> jax.Array:
    """The full GPT forward pass: tokens -> next-token logits.

    Composed of :func:`gpt_embed`, :func:`gpt_block` per layer (layer list) or
    :func:`gpt_blocks` (stacked), and :func:`gpt_head`. ``key`` is split into
    ``(k_embed, k_blocks)``; layer ``i`` uses ``fold_in(k_blocks, i)`` in both layouts, so they
    agree with dropout on too. Dropout runs only with ``train=True`` and a ``key``.

    Args:
      params: from :func:`gpt_init`, either layout.
      tokens: ``[batch, seq]`` int32 ids, ``seq <= config.seq_len``.
      config: the model.
      key: PRNG key for dropout.
      train: enable dropout.
      compute_dtype: e.g. ``jnp.bfloat16``: parameters and activations are cast for the matmuls;
        LayerNorm statistics, attention softmax and the logits stay float32.
      remat: wraps each layer's function for activation checkpointing (``state.remat``, or
        ``functools.partial(jax.checkpoint, policy=...)``); values are unchanged.

    Returns:
      ``[batch, seq, vocab_size]`` float32 logits; position ``t`` depends only on tokens
      ``<= t``.

    Raises:
      ModelError: parameters that do not match ``config`` (the message names the path), a
        layer count other than ``config.n_layers``, bad tokens.

    Example:
      >>> config = GPTConfig(vocab_size=64, seq_len=16, d_model=32, n_heads=4, n_layers=2)
      >>> params = gpt_init(config, jax.random.key(0))
      >>> apply = jax.jit(gpt_apply, static_argnames=("config", "train", "compute_dtype"))
      >>> logits = apply(params, jnp.zeros((2, 16), jnp.int32), config=config)
      >>> logits.shape, logits.dtype
      ((2, 16, 64), dtype('float32'))
    """
    api = "gpt_apply"
    dtype = resolve_dtype(api, compute_dtype)
    rate, key = _dropout(config, key, train)
    k_embed, k_blocks = _split(key, 2)
    x = _embed(api, params, tokens, config=config, key=k_embed, rate=rate, dtype=dtype)
    blocks = params["blocks"]
    if is_stacked(params):
        dims = leading_dims(blocks)
        if dims != {config.n_layers}:
            raise ModelError(
                f"{api}: stacked blocks have leading dims {sorted(dims)} but config.n_layers="
                f"{config.n_layers}; create the parameters with the same config."
            )
        x = _scan_blocks(
            api,
            blocks,
            x,
            config=config,
            key=k_blocks,
            rate=rate,
            dtype=dtype,
            layer_offset=0,
            remat=remat,
        )
    else:
        if len(blocks) != config.n_layers:
            raise ModelError(
                f"{api}: params['blocks'] holds {len(blocks)} layers but config.n_layers="
                f"{config.n_layers}; create the parameters with the same config."
            )
        shapes = block_param_shapes(config)
        block_fn = _block_fn(config, rate, dtype, remat)
        for i, block in enumerate(blocks):
            check_tree_shapes(api, block, shapes, prefix=f"blocks/{i}")
            layer_key = None if k_blocks is None else jax.random.fold_in(k_blocks, i)
            x = block_fn(block, x, layer_key)
    return _head(api, params, x, config=config, dtype=dtype)
