"""``GPTConfig``: the hyperparameters of the reference GPT, its parameter shapes and FLOPs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from titanax.models._checks import positive_int
from titanax.models._errors import ModelError

__all__ = [
    "GPTConfig",
    "block_param_shapes",
    "gpt_flops_per_token",
    "gpt_param_count",
    "top_param_shapes",
]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class GPTConfig:
    """Hyperparameters of the reference GPT (decoder-only, pre-norm, GPT-2 style).

    Args:
      vocab_size: number of token ids; embedding rows and logit columns.
      seq_len: maximum sequence length (rows of the learned positional embedding).
      d_model: width of the residual stream; must divide by ``n_heads``.
      n_heads: attention heads; each has ``head_dim = d_model // n_heads``.
      n_layers: transformer blocks.
      d_ff: hidden width of the MLP; ``None`` means ``4 * d_model`` (resolved at construction,
        so ``config.d_ff`` is always an int afterwards).
      dropout: dropout rate in ``[0, 1)`` on the embedding and on both residual branches; only
        applied with ``train=True`` and a ``key``.
      init_std: standard deviation of the normal initializer of embeddings and kernels (the
        residual output projections use ``init_std / sqrt(2 * n_layers)``, as in GPT-2).

    Raises:
      ModelError: a size that is not a positive int, ``d_model`` not divisible by ``n_heads``,
        ``dropout`` outside ``[0, 1)``, ``init_std`` not a positive finite float.

    Example:
      >>> config = GPTConfig(vocab_size=256, seq_len=64, d_model=128, n_heads=4, n_layers=2)
      >>> config.d_ff, config.head_dim
      (512, 32)
    """

    vocab_size: int
    seq_len: int
    d_model: int
    n_heads: int
    n_layers: int
    d_ff: int | None = None
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        api = "GPTConfig"
        for name in ("vocab_size", "seq_len", "d_model", "n_heads", "n_layers"):
            object.__setattr__(self, name, positive_int(api, name, getattr(self, name)))
        if self.d_model % self.n_heads:
            divisors = [h for h in range(1, self.d_model + 1) if not self.d_model % h]
            raise ModelError(
                f"{api}: d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "every head needs d_model // n_heads features. Pick n_heads among the divisors "
                f"of {self.d_model}: {divisors[:12]}."
            )
        d_ff = 4 * self.d_model if self.d_ff is None else positive_int(api, "d_ff", self.d_ff)
        object.__setattr__(self, "d_ff", d_ff)
        for name in ("dropout", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
                raise ModelError(f"{api}: {name}={value!r} is not a float.")
            object.__setattr__(self, name, float(value))
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(
                f"{api}: dropout={self.dropout} must be in [0, 1) (the probability of zeroing "
                "an activation); use 0.0 for no dropout."
            )
        if not (math.isfinite(self.init_std) and self.init_std > 0.0):
            raise ModelError(
                f"{api}: init_std={self.init_std} must be a positive finite float "
                "(GPT-2 uses 0.02)."
            )

    @property
    def head_dim(self) -> int:
        """Features per attention head, ``d_model // n_heads``."""
        return self.d_model // self.n_heads

    @property
    def mlp_dim(self) -> int:
        """The resolved MLP hidden width (``d_ff``, typed as ``int``)."""
        return int(self.d_ff) if self.d_ff is not None else 4 * self.d_model


def block_param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Path -> shape of one block's parameters (CONTRACTS A paths without ``blocks/<i>/``)."""
    d, f = config.d_model, config.mlp_dim
    shapes: dict[str, tuple[int, ...]] = {"ln1/scale": (d,), "ln1/bias": (d,)}
    for name in ("q", "k", "v", "out"):
        shapes[f"attn/{name}/kernel"] = (d, d)
        shapes[f"attn/{name}/bias"] = (d,)
    shapes.update(
        {
            "ln2/scale": (d,),
            "ln2/bias": (d,),
            "mlp/up/kernel": (d, f),
            "mlp/up/bias": (f,),
            "mlp/down/kernel": (f, d),
            "mlp/down/bias": (d,),
        }
    )
    return shapes


def top_param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Path -> shape of the parameters outside the blocks (embeddings, final norm, head)."""
    d = config.d_model
    return {
        "embed/embedding": (config.vocab_size, d),
        "pos_embed/embedding": (config.seq_len, d),
        "ln_f/scale": (d,),
        "ln_f/bias": (d,),
        "head/kernel": (d, config.vocab_size),
    }


def gpt_param_count(config: GPTConfig, *, embeddings: bool = True) -> int:
    """Number of parameters (array elements) of ``gpt_init(config, key)``.

    Args:
      config: the model.
      embeddings: include the token and positional embedding tables. ``False`` gives the
        "non-embedding" count used for FLOPs: blocks, final norm and the (untied) LM head.

    Returns:
      The count as a Python int; equal to the sum of ``leaf.size`` over the parameter tree when
      ``embeddings=True``.
    """
    per_block = sum(math.prod(s) for s in block_param_shapes(config).values())
    top = top_param_shapes(config)
    if not embeddings:
        top = {k: v for k, v in top.items() if not k.endswith("/embedding")}
    return config.n_layers * per_block + sum(math.prod(s) for s in top.values())


def gpt_flops_per_token(config: GPTConfig) -> int:
    """Training FLOPs per token (forward + backward) of the reference GPT, for MFU.

    ``6 * N + 12 * n_layers * seq_len * d_model``, where ``N = gpt_param_count(config,
    embeddings=False)`` (blocks, final norm and the untied LM head; embedding lookups are
    gathers, not matmuls). ``6 N`` is 2 FLOPs per multiply-add times 3 for forward plus backward
    (backward costs twice the forward); the second term is the attention score and value
    matmuls (``QK^T`` and ``PV``: 2 matmuls x 2 FLOPs x ``seq_len * d_model`` per token and
    layer, times 3), counted for the full ``seq_len x seq_len`` score matrix — causal masking
    does not reduce it, as in the references. Bias adds, norms, GELU and softmax are ignored.
    MFU = tokens/s x ``gpt_flops_per_token`` / peak FLOP/s.

    Args:
      config: the model; ``seq_len`` is the training context length.

    Returns:
      FLOPs per trained token, a Python int.

    References:
      Chowdhery et al. 2022, "PaLM: Scaling Language Modeling with Pathways", Appendix B
      (``6N + 12 L H Q T``, with ``H Q = d_model`` and ``T = seq_len``); Hoffmann et al. 2022,
      "Training Compute-Optimal Large Language Models" (Chinchilla), Appendix F; Kaplan et al.
      2020, "Scaling Laws for Neural Language Models", Section 2.1.
    """
    n = gpt_param_count(config, embeddings=False)
    return 6 * n + 12 * config.n_layers * config.seq_len * config.d_model
