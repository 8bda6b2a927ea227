"""tp_rules presets: the GPT table of CONTRACTS A, Hugging Face names, Flax NNX modules."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from titanax.sharding import TP, Plan, ShardingError, build_param_specs, tp_rules, tree_paths

T = "tensor"

# CONTRACTS A, written out by hand for the layer-list layout.
GPT_LIST = {
    "embed/embedding": P(T, None),
    "pos_embed/embedding": P(),
    "ln1/scale": P(),
    "ln1/bias": P(),
    "attn/q/kernel": P(None, T),
    "attn/k/kernel": P(None, T),
    "attn/v/kernel": P(None, T),
    "attn/q/bias": P(T),
    "attn/k/bias": P(T),
    "attn/v/bias": P(T),
    "attn/out/kernel": P(T, None),
    "attn/out/bias": P(),
    "ln2/scale": P(),
    "ln2/bias": P(),
    "mlp/up/kernel": P(None, T),
    "mlp/up/bias": P(T),
    "mlp/down/kernel": P(T, None),
    "mlp/down/bias": P(),
    "ln_f/scale": P(),
    "ln_f/bias": P(),
    "head/kernel": P(None, T),
}
TOP = ("embed/embedding", "pos_embed/embedding", "ln_f/scale", "ln_f/bias", "head/kernel")


def specs_by_path(tree: Any, specs: Any) -> dict[str, P]:
    return dict(zip(tree_paths(tree), jax.tree.leaves(specs), strict=True))


def test_gpt_layer_list_matches_the_contract(make_gpt) -> None:  # type: ignore[no-untyped-def]
    params = make_gpt(layers=3)
    got = specs_by_path(params, build_param_specs(params, tp_rules.gpt()))
    assert len(got) == 5 + 3 * 16
    for path, spec in got.items():
        key = path if path in TOP else path.split("/", 2)[2]
        assert spec == GPT_LIST[key], path


@pytest.mark.parametrize("pipeline_axis", [None, "pipeline"])
def test_gpt_stacked_gets_a_leading_entry(make_gpt, pipeline_axis) -> None:  # type: ignore[no-untyped-def]
    params = make_gpt(layers=4, stacked=True)
    rules = tp_rules.gpt(stacked=True, pipeline_axis=pipeline_axis)
    got = specs_by_path(params, build_param_specs(params, rules))
    for path, spec in got.items():
        if path in TOP:
            assert spec == GPT_LIST[path], path
        else:
            assert spec == P(pipeline_axis, *GPT_LIST[path.removeprefix("blocks/")]), path
    assert got["blocks/attn/q/kernel"] == P(pipeline_axis, None, T)


def test_gpt_has_no_unmatched_paths_and_renames_the_axis(make_gpt, make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = make_mesh(("data", "model"), (2, 4))
    params = make_gpt()
    plan = Plan(tensor_parallel=TP("model", rules=tp_rules.gpt("model")))
    layout = plan.layout(params, mesh)
    assert layout.unmatched == ()
    assert specs_by_path(params, plan.param_specs(params, mesh))["head/kernel"] == P(None, "model")


def test_gpt_fused_qkv() -> None:
    assert tp_rules.gpt().match("blocks/0/attn/qkv/kernel") == (
        "blocks/*/attn/qkv/kernel",
        P(None, T),
    )


def test_pipeline_axis_needs_stacked() -> None:
    with pytest.raises(
        ShardingError, match=r"tp_rules.gpt: pipeline_axis='pipeline' needs stacked"
    ):
        tp_rules.gpt(pipeline_axis="pipeline")
    with pytest.raises(ShardingError, match=r"tp_rules.hf: pipeline_axis='pp' needs stacked"):
        tp_rules.hf(pipeline_axis="pp")


def llama_tree(*, d: int = 16, ff: int = 32, vocab: int = 64, torch: bool = False) -> dict:
    z = np.zeros

    def dense(i: int, o: int) -> dict:
        return {"weight": z((o, i), np.float32)} if torch else {"kernel": z((i, o), np.float32)}

    norm = {"weight": z((d,), np.float32)} if torch else {"scale": z((d,), np.float32)}
    layer = {
        "self_attn": {n: dense(d, d) for n in ("q_proj", "k_proj", "v_proj", "o_proj")},
        "mlp": {"gate_proj": dense(d, ff), "up_proj": dense(d, ff), "down_proj": dense(ff, d)},
        "input_layernorm": dict(norm),
        "post_attention_layernorm": dict(norm),
    }
    embed = {"weight": z((vocab, d), np.float32)} if torch else {"embedding": z((vocab, d))}
    return {
        "model": {"embed_tokens": embed, "layers": [layer, layer], "norm": dict(norm)},
        "lm_head": dense(d, vocab),
    }


@pytest.mark.parametrize("torch", [False, True])
def test_hf_llama_names(torch: bool) -> None:
    tree = llama_tree(torch=torch)
    got = specs_by_path(tree, build_param_specs(tree, tp_rules.hf()))
    leaf = "weight" if torch else "kernel"
    col, row = (P(T, None), P(None, T)) if torch else (P(None, T), P(T, None))
    assert got[f"model/layers/1/self_attn/q_proj/{leaf}"] == col
    assert got[f"model/layers/1/self_attn/v_proj/{leaf}"] == col
    assert got[f"model/layers/1/self_attn/o_proj/{leaf}"] == row
    assert got[f"model/layers/0/mlp/gate_proj/{leaf}"] == col
    assert got[f"model/layers/0/mlp/up_proj/{leaf}"] == col
    assert got[f"model/layers/0/mlp/down_proj/{leaf}"] == row
    norm_leaf = "weight" if torch else "scale"
    assert got[f"model/layers/0/input_layernorm/{norm_leaf}"] == P()
    assert got[f"model/norm/{norm_leaf}"] == P()
    embed_leaf = "weight" if torch else "embedding"
    assert got[f"model/embed_tokens/{embed_leaf}"] == P(T, None)
    assert got[f"lm_head/{leaf}"] == (P(T, None) if torch else P(None, T))
    matched = Plan(tensor_parallel=TP(rules=tp_rules.hf()))
    assert matched.layout(tree, jax.sharding.Mesh(np.array(jax.devices()), (T,))).unmatched == ()


def test_hf_stacked_layers() -> None:
    rules = tp_rules.hf(stacked=True, pipeline_axis="pipeline")
    assert rules.match("model/layers/mlp/down_proj/kernel")[1] == P("pipeline", T, None)  # type: ignore[index]
    assert rules.match("model/layers/input_layernorm/scale")[1] == P("pipeline")  # type: ignore[index]


def test_flax_nnx_modules_are_placed_on_the_mesh(make_mesh) -> None:  # type: ignore[no-untyped-def]
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.embed = nnx.Embed(32, 16, rngs=rngs)
            self.norm1 = nnx.LayerNorm(16, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(
                num_heads=4, in_features=16, qkv_features=16, decode=False, rngs=rngs
            )
            self.mlp = nnx.Dict(
                up=nnx.Linear(16, 32, rngs=rngs), down=nnx.Linear(32, 16, rngs=rngs)
            )

    graphdef, state = nnx.split(nnx.eval_shape(lambda: Block(nnx.Rngs(0))))
    mesh = make_mesh(("data", T), (2, 4))
    plan = Plan(tensor_parallel=TP(T, rules=tp_rules.flax_nnx()))
    specs = plan.param_specs(state, mesh)
    got = specs_by_path(state, specs)
    assert got["attn/query/kernel"] == P(None, T, None)  # [d, heads, head_dim]: split heads
    assert got["attn/key/bias"] == P(T, None)
    assert got["attn/out/kernel"] == P(T, None, None)  # [heads, head_dim, d]
    assert got["attn/out/bias"] == P()
    assert got["mlp/up/kernel"] == P(None, T)
    assert got["mlp/down/kernel"] == P(T, None)
    assert got["embed/embedding"] == P(T, None)
    assert got["norm1/scale"] == P()
    assert plan.layout(state, mesh).unmatched == ()
    from titanax.sharding import apply_named_sharding

    values = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), state)
    placed = apply_named_sharding(values, mesh, specs)
    model = nnx.merge(graphdef, placed)
    assert model.attn.query.kernel[...].sharding.spec == P(None, T, None)
