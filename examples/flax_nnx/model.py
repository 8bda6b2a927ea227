"""A small decoder-only language model written the usual Flax NNX way — nothing Titanax in it.

Built only from Flax's own modules: ``nnx.Embed`` (tokens and positions), ``nnx.LayerNorm``,
``nnx.MultiHeadAttention`` (``query``/``key``/``value`` kernels ``[d, heads, head_dim]``, ``out``
``[heads, head_dim, d]``) and ``nnx.Linear`` (``mlp/up``, ``mlp/down``, ``lm_head``). Those are
the names ``titanax.sharding.tp_rules.flax_nnx()`` knows, so the model gets a Megatron layout
without a line of sharding code in it.

``TinyLM(vocab_size, seq_len, d_model, n_heads, n_layers, d_ff=None, *, rngs)`` maps token ids
``[batch, seq]`` (int32) to logits ``[batch, seq, vocab_size]`` (float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class MLP(nnx.Module):
    """``down(gelu(up(x)))``: up ``[d, d_ff]`` (column-parallel), down ``[d_ff, d]`` (row)."""

    def __init__(self, d_model: int, d_ff: int, *, rngs: nnx.Rngs) -> None:
        self.up = nnx.Linear(d_model, d_ff, rngs=rngs)
        self.down = nnx.Linear(d_ff, d_model, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(nnx.gelu(self.up(x)))


class Block(nnx.Module):
    """A pre-norm transformer block: causal self-attention, then the MLP, each residual."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, *, rngs: nnx.Rngs) -> None:
        self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=n_heads, in_features=d_model, decode=False, rngs=rngs
        )
        self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.mlp = MLP(d_model, d_ff, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.mlp(self.ln2(x))


class TinyLM(nnx.Module):
    """Token and position embeddings, ``n_layers`` blocks, final norm, untied LM head."""

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        d_ff: int | None = None,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
        self.pos_embed = nnx.Embed(seq_len, d_model, rngs=rngs)
        self.blocks = nnx.List(
            [Block(d_model, n_heads, d_ff or 4 * d_model, rngs=rngs) for _ in range(n_layers)]
        )
        self.ln_f = nnx.LayerNorm(d_model, rngs=rngs)
        self.lm_head = nnx.Linear(d_model, vocab_size, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        positions = jnp.arange(tokens.shape[1])
        x = self.embed(tokens) + self.pos_embed(positions)[None]
        mask = nnx.make_causal_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.lm_head(self.ln_f(x)).astype(jnp.float32)
