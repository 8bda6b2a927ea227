"""Flax NNX models the ``flax_nnx`` model kind is tested with (loaded by file path)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class MLP(nnx.Module):
    """``up`` then ``down``: the MLP names ``tp_rules.flax_nnx`` knows."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs) -> None:
        self.up = nnx.Linear(d_model, 4 * d_model, rngs=rngs)
        self.down = nnx.Linear(4 * d_model, d_model, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(nnx.relu(self.up(x)))


class SmallLM(nnx.Module):
    """Embedding, one attention + MLP block with Flax's names, final norm and LM head."""

    def __init__(
        self, vocab_size: int, seq_len: int, d_model: int, n_heads: int, *, rngs: nnx.Rngs
    ) -> None:
        self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
        self.pos_embed = nnx.Embed(seq_len, d_model, rngs=rngs)
        self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=n_heads, in_features=d_model, decode=False, rngs=rngs
        )
        self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.mlp = MLP(d_model, rngs=rngs)
        self.ln_f = nnx.LayerNorm(d_model, rngs=rngs)
        self.lm_head = nnx.Linear(d_model, vocab_size, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens) + self.pos_embed(jnp.arange(tokens.shape[1]))[None]
        x = x + self.attn(self.ln1(x), mask=nnx.make_causal_mask(tokens))
        x = x + self.mlp(self.ln2(x))
        return self.lm_head(self.ln_f(x))


class Classifier(nnx.Module):
    """``x [B, H, W] -> logits [B, 10]``: flatten, one hidden layer."""

    def __init__(self, hidden: int = 16, *, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(64, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden(x.reshape(x.shape[0], -1))))


class WithBatchNorm(nnx.Module):
    """Holds batch statistics: not a parameter-only model."""

    def __init__(self, vocab_size: int, seq_len: int, *, rngs: nnx.Rngs) -> None:
        del seq_len
        self.embed = nnx.Embed(vocab_size, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)


NOT_A_MODULE = 3


class Plain:
    """Not an nnx.Module."""
