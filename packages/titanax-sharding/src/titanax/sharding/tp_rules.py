"""Megatron-style tensor-parallel rule presets for transformer blocks.

Every preset follows the same layout (Shoeybi et al., 2019):

* attention q/k/v (or a fused qkv) projections: **column-parallel** — the output dim (heads) is
  split over the tensor axis, so each device computes whole heads;
* the attention output projection: **row-parallel** — the input dim is split, the partial
  products are summed (one all-reduce);
* MLP up/gate: column-parallel; MLP down: row-parallel;
* the token embedding: **vocab-parallel** (rows split); the LM head: column-parallel (vocab
  split, for a vocab-parallel cross-entropy);
* norms, position embeddings and the biases of row-parallel layers: replicated (explicit
  ``P()`` rules, so they never show up as unmatched).

Kernels are Flax-oriented ``[in, out]`` (column-parallel ``P(None, axis)``, row-parallel
``P(axis, None)``) unless the preset says otherwise.

Example:
  >>> from titanax.sharding import tp_rules
  >>> tp_rules.gpt().match("blocks/3/attn/q/kernel")
  ('blocks/*/attn/q/kernel', P(None, 'tensor'))

References:
  Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models Using Model
  Parallelism", 2019, https://arxiv.org/abs/1909.08053.
"""

from __future__ import annotations

from typing import Any

from jax.sharding import PartitionSpec

from titanax.sharding._errors import ShardingError
from titanax.sharding._rules import Rules

__all__ = ["flax_nnx", "gpt", "hf"]


def _layer(stacked: bool, pipeline_axis: str | None, api: str) -> tuple[Any, ...]:
    if pipeline_axis is not None and not stacked:
        raise ShardingError(
            f"tp_rules.{api}: pipeline_axis={pipeline_axis!r} needs stacked=True; only the "
            "stacked layout (a leading [n_layers] dim on every block leaf) can be split over a "
            "pipeline axis."
        )
    return (pipeline_axis,) if stacked else ()


def _column(axis: str, lead: tuple[Any, ...]) -> tuple[PartitionSpec, PartitionSpec]:
    """(kernel [in, out], bias [out]) of a column-parallel dense layer."""
    return PartitionSpec(*lead, None, axis), PartitionSpec(*lead, axis)


def _row(axis: str, lead: tuple[Any, ...]) -> tuple[PartitionSpec, PartitionSpec]:
    """(kernel [in, out], bias [out]) of a row-parallel dense layer; the bias is replicated."""
    return PartitionSpec(*lead, axis, None), PartitionSpec(*lead)


def gpt(axis: str = "tensor", *, stacked: bool = False, pipeline_axis: str | None = None) -> Rules:
    """Rules for the project's GPT (``titanax.models.gpt``) parameter names.

    Names (``d = d_model``; ``<i>`` the layer index in the layer-list layout)::

      embed/embedding            [vocab, d]  vocab-parallel   P(axis, None)
      pos_embed/embedding        [seq, d]    replicated       P()
      blocks/<i>/ln1|ln2/scale|bias [d]      replicated       P()
      blocks/<i>/attn/q|k|v/kernel [d, d]    column-parallel  P(None, axis)
      blocks/<i>/attn/q|k|v/bias [d]         column-parallel  P(axis)
      blocks/<i>/attn/qkv/kernel [d, 3d]     column-parallel  P(None, axis)   (fused variant)
      blocks/<i>/attn/out/kernel [d, d]      row-parallel     P(axis, None)
      blocks/<i>/attn/out/bias   [d]         replicated
      blocks/<i>/mlp/up/kernel   [d, d_ff]   column-parallel  P(None, axis);  up/bias P(axis)
      blocks/<i>/mlp/down/kernel [d_ff, d]   row-parallel     P(axis, None);  down/bias P()
      ln_f/scale|bias            [d]         replicated
      head/kernel                [d, vocab]  column-parallel  P(None, axis)

    A fused ``qkv`` kernel must keep whole heads of q, k and v in each column block (head-major
    ``[d, heads * 3 * head_dim]``) for the split to be correct.

    Args:
      axis: the tensor-parallel mesh axis.
      stacked: the stacked layout: block leaves are ``blocks/...`` (no index) with a leading
        ``[n_layers]`` dim, and every block spec gets a leading entry.
      pipeline_axis: with ``stacked``, the leading entry (layers split over the pipeline axis);
        ``None`` keeps the layer dim unsharded.

    Returns:
      The :class:`Rules`.

    Raises:
      ShardingError: ``pipeline_axis`` without ``stacked``.

    Example:
      >>> gpt(stacked=True, pipeline_axis="pipeline").match("blocks/attn/q/kernel")[1]
      P('pipeline', None, 'tensor')
    """
    lead = _layer(stacked, pipeline_axis, "gpt")
    block = "blocks/" if stacked else "blocks/*/"
    col_k, col_b = _column(axis, lead)
    row_k, row_b = _row(axis, lead)
    rules: list[tuple[str, PartitionSpec]] = [
        ("embed/embedding", PartitionSpec(axis, None)),
        ("pos_embed/embedding", PartitionSpec()),
    ]
    for norm in ("ln1", "ln2"):
        rules += [(f"{block}{norm}/scale", PartitionSpec(*lead))]
        rules += [(f"{block}{norm}/bias", PartitionSpec(*lead))]
    for proj in ("q", "k", "v", "qkv"):
        rules += [(f"{block}attn/{proj}/kernel", col_k), (f"{block}attn/{proj}/bias", col_b)]
    rules += [(f"{block}attn/out/kernel", row_k), (f"{block}attn/out/bias", row_b)]
    rules += [(f"{block}mlp/up/kernel", col_k), (f"{block}mlp/up/bias", col_b)]
    rules += [(f"{block}mlp/down/kernel", row_k), (f"{block}mlp/down/bias", row_b)]
    rules += [
        ("ln_f/scale", PartitionSpec()),
        ("ln_f/bias", PartitionSpec()),
        ("head/kernel", PartitionSpec(None, axis)),
        ("head/bias", PartitionSpec(axis)),
    ]
    return Rules(rules)


def hf(axis: str = "tensor", *, stacked: bool = False, pipeline_axis: str | None = None) -> Rules:
    """Rules for Hugging Face Llama-style names (Llama, Mistral, Qwen2, Gemma ports).

    Matches the names as they appear in Flax checkpoints and Flax NNX ports (``nnx.split``
    State): ``[model/]embed_tokens``, ``[model/]layers/<i>/self_attn/{q,k,v,o}_proj``,
    ``mlp/{gate,up,down}_proj``, ``input_layernorm``, ``post_attention_layernorm``,
    ``[model/]norm``, ``lm_head``. Leaves: Flax ``kernel`` ``[in, out]``, ``bias``,
    ``embedding`` (``nnx.Embed``), norm ``scale``; and PyTorch-layout ``weight`` (``[out, in]``
    for projections, ``[vocab, d]`` for embeddings and the head, ``[d]`` for norms), for state
    dicts loaded with ``"."`` turned into ``"/"``. Patterns are anchored by a leading name (no
    ``model/`` needed): a prefix matches as described in :class:`Rules`.

    Layouts (Flax ``kernel`` ``[in, out]``; torch ``weight`` ``[out, in]`` is transposed)::

      embed_tokens                vocab-parallel   P(axis, None)
      self_attn/{q,k,v}_proj      column-parallel  kernel P(None, axis), bias P(axis)
      self_attn/o_proj            row-parallel     kernel P(axis, None), bias P()
      mlp/{gate,up}_proj          column-parallel  kernel P(None, axis)
      mlp/down_proj               row-parallel     kernel P(axis, None)
      *_layernorm, norm           replicated       P()
      lm_head                     column-parallel  kernel P(None, axis); torch weight P(axis, None)

    Args:
      axis: the tensor-parallel mesh axis.
      stacked: layers stacked under ``layers/...`` with a leading ``[n_layers]`` dim.
      pipeline_axis: with ``stacked``, the leading entry of every layer spec.

    Returns:
      The :class:`Rules`.

    Raises:
      ShardingError: ``pipeline_axis`` without ``stacked``.

    Example:
      >>> hf().match("model/layers/0/mlp/down_proj/kernel")[1]
      P('tensor', None)
    """
    lead = _layer(stacked, pipeline_axis, "hf")
    layer = "layers/" if stacked else "layers/*/"
    col_k, col_b = _column(axis, lead)
    row_k, row_b = _row(axis, lead)
    torch_col = PartitionSpec(*lead, axis, None)  # weight [out, in]: split out
    torch_row = PartitionSpec(*lead, None, axis)  # weight [out, in]: split in
    replicated = PartitionSpec(*lead)
    rules: list[tuple[str, PartitionSpec]] = [
        ("embed_tokens/embedding", PartitionSpec(axis, None)),
        ("embed_tokens/weight", PartitionSpec(axis, None)),
        ("lm_head/kernel", PartitionSpec(None, axis)),
        ("lm_head/weight", PartitionSpec(axis, None)),
        ("lm_head/bias", PartitionSpec(axis)),
        ("norm/scale", PartitionSpec()),
        ("norm/weight", PartitionSpec()),
        ("norm/bias", PartitionSpec()),
    ]
    for proj in ("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj"):
        rules += [(f"{layer}{proj}/kernel", col_k), (f"{layer}{proj}/weight", torch_col)]
        rules += [(f"{layer}{proj}/bias", col_b)]
    for proj in ("mlp/gate_proj", "mlp/up_proj"):
        rules += [(f"{layer}{proj}/kernel", col_k), (f"{layer}{proj}/weight", torch_col)]
        rules += [(f"{layer}{proj}/bias", col_b)]
    for proj in ("self_attn/o_proj", "mlp/down_proj"):
        rules += [(f"{layer}{proj}/kernel", row_k), (f"{layer}{proj}/weight", torch_row)]
        rules += [(f"{layer}{proj}/bias", row_b)]
    for norm in ("input_layernorm", "post_attention_layernorm"):
        for leaf in ("scale", "weight", "bias"):
            rules += [(f"{layer}{norm}/{leaf}", replicated)]
    return Rules(rules)


_NNX_NORMS = ("norm", "norm1", "norm2", "ln", "ln1", "ln2", "ln_f", "final_norm")


def flax_nnx(
    axis: str = "tensor",
    *,
    attention: str = "attn",
    mlp: str = "mlp",
    norms: tuple[str, ...] = _NNX_NORMS,
) -> Rules:
    """Rules for models built from Flax NNX's own modules (``nnx.MultiHeadAttention``).

    ``nnx.MultiHeadAttention`` keeps heads as a separate dim: ``query``/``key``/``value`` are
    ``LinearGeneral`` with kernel ``[d, heads, head_dim]`` and bias ``[heads, head_dim]`` —
    split over heads (column-parallel, ``P(None, axis, None)`` / ``P(axis, None)``); ``out`` has
    kernel ``[heads, head_dim, d]`` — split over heads (row-parallel, ``P(axis, None, None)``),
    bias ``[d]`` replicated. The MLP uses ``nnx.Linear`` named ``{mlp}/up``, ``{mlp}/gate``
    (column-parallel) and ``{mlp}/down`` (row-parallel), as in the Flax NNX transformer
    examples; ``nnx.Embed`` tables named ``embed``/``embedder`` are vocab-parallel, an
    ``lm_head`` ``nnx.Linear`` is column-parallel, and the ``scale``/``bias`` of the
    ``nnx.LayerNorm``/``nnx.RMSNorm`` modules named in ``norms`` are replicated. Paths come from
    ``nnx.split(model)``.

    Args:
      axis: the tensor-parallel mesh axis.
      attention: the attribute name of the ``nnx.MultiHeadAttention`` module in each block.
      mlp: the attribute name of the MLP module in each block.
      norms: attribute names of norm modules (replicated).

    Returns:
      The :class:`Rules`.

    Example:
      >>> flax_nnx().match("layers/0/attn/query/kernel")[1]
      P(None, 'tensor', None)
    """
    col_k, col_b = _column(axis, ())
    row_k, row_b = _row(axis, ())
    rules: list[tuple[str, PartitionSpec]] = []
    for proj in ("query", "key", "value"):
        rules += [(f"{attention}/{proj}/kernel", PartitionSpec(None, axis, None))]
        rules += [(f"{attention}/{proj}/bias", PartitionSpec(axis, None))]
    rules += [(f"{attention}/out/kernel", PartitionSpec(axis, None, None))]
    rules += [(f"{attention}/out/bias", PartitionSpec())]
    for proj in ("up", "gate"):
        rules += [(f"{mlp}/{proj}/kernel", col_k), (f"{mlp}/{proj}/bias", col_b)]
    rules += [(f"{mlp}/down/kernel", row_k), (f"{mlp}/down/bias", row_b)]
    rules += [
        ("embed/embedding", PartitionSpec(axis, None)),
        ("embedder/embedding", PartitionSpec(axis, None)),
        ("lm_head/kernel", PartitionSpec(None, axis)),
        ("lm_head/bias", PartitionSpec(axis)),
    ]
    for norm in norms:
        rules += [(f"{norm}/scale", PartitionSpec()), (f"{norm}/bias", PartitionSpec())]
    return Rules(rules)
