"""GPT parameters: ``gpt_init`` and the two layouts of the blocks.

Paths follow CONTRACTS A (``embed/embedding``, ``blocks/<i>/attn/q/kernel``, ...,
``head/kernel``), which the tensor-parallel rules of ``titanax.sharding.tp_rules.gpt()`` match:

* layer list: ``params["blocks"]`` is a list of ``n_layers`` block dicts (``blocks/<i>/...``);
* stacked: ``params["blocks"]`` is one block dict whose leaves carry a leading ``[n_layers]``
  dim (``blocks/...``): the forward scans over it (one compiled block), and a pipeline shards
  that dim over its stages.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp

from titanax.models._checks import param_dtype, path_of
from titanax.models._errors import ModelError
from titanax.models._gpt_config import GPTConfig

__all__ = [
    "DTypeLike",
    "Params",
    "gpt_init",
    "is_stacked",
    "leading_dims",
    "stack_blocks",
    "unstack_blocks",
]

Params: TypeAlias = dict[str, Any]
DTypeLike: TypeAlias = Any  # jnp.bfloat16, "bfloat16", np.dtype, None, ...


def _block_kernels(config: GPTConfig) -> list[tuple[str, str, tuple[int, int], float]]:
    """(group, name, shape, std) of one block's kernels, in draw order."""
    d, f, std = config.d_model, config.mlp_dim, config.init_std
    resid = std / math.sqrt(2 * config.n_layers)
    return [
        ("attn", "q", (d, d), std),
        ("attn", "k", (d, d), std),
        ("attn", "v", (d, d), std),
        ("attn", "out", (d, d), resid),
        ("mlp", "up", (d, f), std),
        ("mlp", "down", (f, d), resid),
    ]


def _top_kernels(config: GPTConfig) -> list[tuple[str, str, tuple[int, int]]]:
    """(group, leaf, shape) of the embeddings and the head, in draw order."""
    v, s, d = config.vocab_size, config.seq_len, config.d_model
    return [
        ("embed", "embedding", (v, d)),
        ("pos_embed", "embedding", (s, d)),
        ("head", "kernel", (d, v)),
    ]


@functools.partial(jax.jit, static_argnames=("config", "stacked", "dtype"))
def _init(key: jax.Array, *, config: GPTConfig, stacked: bool, dtype: Any) -> Params:
    n_layers, d = config.n_layers, config.d_model
    k_top, k_blocks = jax.random.split(key)

    block_specs = _block_kernels(config)
    flat = jax.random.normal(
        k_blocks, (n_layers, sum(math.prod(s) for _, _, s, _ in block_specs)), jnp.float32
    )
    blocks: Any = {
        "ln1": {"scale": jnp.ones((n_layers, d), dtype), "bias": jnp.zeros((n_layers, d), dtype)},
        "attn": {},
        "ln2": {"scale": jnp.ones((n_layers, d), dtype), "bias": jnp.zeros((n_layers, d), dtype)},
        "mlp": {},
    }
    offset = 0
    for group, name, shape, std in block_specs:
        size = math.prod(shape)
        kernel = flat[:, offset : offset + size].reshape(n_layers, *shape) * jnp.float32(std)
        offset += size
        blocks[group][name] = {
            "kernel": kernel.astype(dtype),
            "bias": jnp.zeros((n_layers, shape[1]), dtype),
        }
    if not stacked:
        blocks = [jax.tree.map(lambda x, i=i: x[i], blocks) for i in range(n_layers)]

    top_specs = _top_kernels(config)
    flat = jax.random.normal(k_top, (sum(math.prod(s) for _, _, s in top_specs),), jnp.float32)
    params: Params = {
        "blocks": blocks,
        "ln_f": {"scale": jnp.ones((d,), dtype), "bias": jnp.zeros((d,), dtype)},
    }
    offset = 0
    for group, leaf, shape in top_specs:
        size = math.prod(shape)
        values = flat[offset : offset + size].reshape(shape) * jnp.float32(config.init_std)
        offset += size
        params[group] = {leaf: values.astype(dtype)}
    return params


def gpt_init(
    config: GPTConfig, key: jax.Array, *, stacked: bool = False, dtype: DTypeLike = jnp.float32
) -> Params:
    """Creates the GPT parameters (CONTRACTS A naming).

    Embeddings, q/k/v, MLP-up and head kernels are ``normal(0, init_std)``; the residual output
    projections (``attn/out``, ``mlp/down``) ``normal(0, init_std / sqrt(2 * n_layers))``
    (GPT-2); biases zero, LayerNorm scales one. Values are drawn in float32 and cast to
    ``dtype``: the block kernels from one ``normal(k_blocks, [n_layers, block_kernel_elements])``
    (row ``i`` is layer ``i``, cut in the order q, k, v, out, up, down), the embeddings and head
    from one ``normal(k_top, [...])``, with ``k_top, k_blocks = split(key)``. Two draws keep
    the compiled init small whatever the depth, and the layer list is the slices of the stack,
    so both layouts hold identical values for the same ``key`` with every PRNG implementation.
    Runs as one jitted program (cached per config, layout and dtype); it also works inside
    ``jax.jit`` (with ``out_shardings``) and ``jax.eval_shape``.

    Args:
      config: the model.
      key: a PRNG key (``jax.random.key`` or legacy ``uint32[2]``).
      stacked: ``False`` gives ``blocks`` as a list of ``n_layers`` dicts (``blocks/<i>/...``);
        ``True`` one dict with a leading ``[n_layers]`` dim on every leaf (``blocks/...``).
      dtype: parameter dtype (float32 by default).

    Returns:
      ``{"embed": {"embedding": [vocab, d]}, "pos_embed": {"embedding": [seq_len, d]},
      "blocks": ..., "ln_f": {"scale", "bias": [d]}, "head": {"kernel": [d, vocab]}}``.

    Raises:
      ModelError: ``config`` is not a ``GPTConfig``; ``dtype`` is not a floating dtype.

    Example:
      >>> config = GPTConfig(vocab_size=64, seq_len=16, d_model=32, n_heads=4, n_layers=2)
      >>> params = gpt_init(config, jax.random.key(0))
      >>> params["blocks"][1]["attn"]["q"]["kernel"].shape
      (32, 32)
      >>> shapes = jax.eval_shape(lambda k: gpt_init(config, k, stacked=True), jax.random.key(0))
      >>> shapes["blocks"]["attn"]["q"]["kernel"].shape  # abstract: nothing is computed
      (2, 32, 32)
    """
    if not isinstance(config, GPTConfig):
        raise ModelError(f"gpt_init: config must be a GPTConfig, got {type(config).__name__}.")
    params: Params = _init(
        key, config=config, stacked=bool(stacked), dtype=param_dtype("gpt_init", dtype)
    )
    return params


def is_stacked(params: Mapping[str, Any]) -> bool:
    """Whether ``params["blocks"]`` is the stacked layout (a dict) rather than a layer list.

    Raises:
      ModelError: ``params`` has no ``"blocks"`` entry, or it is neither a dict nor a list.
    """
    if not isinstance(params, Mapping) or "blocks" not in params:
        raise ModelError(
            "GPT parameters need a 'blocks' entry (a list of block dicts, or one stacked dict); "
            f"got {sorted(params) if isinstance(params, Mapping) else type(params).__name__}."
        )
    blocks = params["blocks"]
    if isinstance(blocks, Mapping):
        return True
    if isinstance(blocks, Sequence) and not isinstance(blocks, str):
        return False
    raise ModelError(
        f"GPT parameters: 'blocks' must be a list of block dicts or a stacked dict, got "
        f"{type(blocks).__name__}."
    )


def _paths(tree: Any) -> list[str]:
    return [path_of(tuple(p)) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def stack_blocks(params: Mapping[str, Any]) -> Params:
    """Layer-list layout -> stacked layout: ``blocks/<i>/x`` leaves become ``blocks/x [L, ...]``.

    Other entries are returned unchanged (not copied).

    Raises:
      ModelError: the blocks are already stacked, the list is empty, or the blocks differ in
        structure or shape.
    """
    if is_stacked(params):
        raise ModelError(
            "stack_blocks: params['blocks'] is already stacked (a dict); pass the layer-list "
            "layout, or use the parameters as they are."
        )
    blocks = list(params["blocks"])
    if not blocks:
        raise ModelError(
            "stack_blocks: params['blocks'] is an empty list; there is nothing to stack."
        )
    first = _paths(blocks[0])
    for i, block in enumerate(blocks):
        paths = _paths(block)
        if paths != first:
            raise ModelError(
                f"stack_blocks: blocks/{i} has parameter paths {paths} but blocks/0 has "
                f"{first}; every block must have the same paths to be stacked."
            )
        for a, b in zip(jax.tree.leaves(blocks[0]), jax.tree.leaves(block), strict=True):
            if a.shape != b.shape or a.dtype != b.dtype:
                raise ModelError(
                    f"stack_blocks: blocks/{i} has a leaf of shape {b.shape} {b.dtype} where "
                    f"blocks/0 has {a.shape} {a.dtype}; stacked blocks must match."
                )
    return {**params, "blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}


def leading_dims(blocks: Any) -> set[int]:
    return {int(leaf.shape[0]) if leaf.ndim else -1 for leaf in jax.tree.leaves(blocks)}


def unstack_blocks(params: Mapping[str, Any]) -> Params:
    """Stacked layout -> layer-list layout: ``blocks/x [L, ...]`` becomes ``blocks/<i>/x``.

    Raises:
      ModelError: the blocks are already a list, or the stacked leaves disagree on ``L``.
    """
    if not is_stacked(params):
        raise ModelError(
            "unstack_blocks: params['blocks'] is already a layer list; pass the stacked layout."
        )
    blocks = params["blocks"]
    sizes = leading_dims(blocks)
    if len(sizes) != 1 or -1 in sizes:
        raise ModelError(
            f"unstack_blocks: stacked leaves have leading dims {sorted(sizes)} (-1: a scalar); "
            "all must share one leading [n_layers] dim."
        )
    (n,) = sizes
    layers = [jax.tree.map(lambda x, i=i: x[i], blocks) for i in range(n)]
    return {**params, "blocks": layers}
