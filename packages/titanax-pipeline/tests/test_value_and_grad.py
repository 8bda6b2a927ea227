"""``pipeline_value_and_grad``: a DP=2 × PP=2 × TP=2 transformer matches one device.

The model is the project's GPT (``titanax.models``: ``gpt_embed`` / ``gpt_blocks`` /
``gpt_head``) when that package is installed, else an inline tiny transformer with the same
parameter names (CONTRACTS A), so that ``titanax.sharding.tp_rules.gpt`` shards both.

The loss picks the target log-probability with a one-hot contraction, not a gather
(``take_along_axis``): with the vocab split over ``tensor`` (column-parallel head) and the batch
over ``data``, XLA's SPMD partitioner aborts on that gather inside the pipeline's partially
manual ``shard_map`` (``spmd_partitioner_util.cc: Check failed: partition_group_list...``; jax
0.10.2 and 0.12.0.1).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from titanax.mesh import MeshSpec
from titanax.pipeline import (
    PipelineError,
    build_schedule,
    pipeline_value_and_grad,
    to_natural_order,
    to_storage_order,
)
from titanax.sharding import DP, PP, TP, Plan, apply_named_sharding, tp_rules

VOCAB, SEQ, D, HEADS, LAYERS, BATCH = 32, 8, 16, 2, 2, 8
HAVE_MODELS = importlib.util.find_spec("titanax.models") is not None


# ----- an inline tiny transformer (GPT naming) for environments without titanax.models -------
def _ln(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


def _dense(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return x @ p["kernel"] + p["bias"]


def _block(p: dict[str, Any], x: jax.Array) -> jax.Array:
    b, s, d = x.shape
    h = _ln(p["ln1"], x)
    q, k, v = (_dense(p["attn"][n], h).reshape(b, s, HEADS, d // HEADS) for n in "qkv")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // HEADS)
    scores = jnp.where(jnp.tril(jnp.ones((s, s), bool)), scores, -1e30)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v).reshape(b, s, d)
    x = x + _dense(p["attn"]["out"], ctx)
    h = jax.nn.gelu(_dense(p["mlp"]["up"], _ln(p["ln2"], x)))
    return x + _dense(p["mlp"]["down"], h)


def _inline_init(key: jax.Array) -> dict[str, Any]:
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))

    def normal(*shape: int) -> jax.Array:
        return jnp.asarray(0.1 * rng.standard_normal(shape), jnp.float32)

    def linear(n_in: int, n_out: int) -> dict[str, jax.Array]:
        return {"kernel": normal(LAYERS, n_in, n_out), "bias": normal(LAYERS, n_out)}

    def norm(*lead: int) -> dict[str, jax.Array]:
        return {"scale": 1.0 + normal(*lead, D), "bias": normal(*lead, D)}

    return {
        "embed": {"embedding": normal(VOCAB, D)},
        "pos_embed": {"embedding": normal(SEQ, D)},
        "blocks": {
            "ln1": norm(LAYERS),
            "attn": {n: linear(D, D) for n in ("q", "k", "v", "out")},
            "ln2": norm(LAYERS),
            "mlp": {"up": linear(D, 4 * D), "down": linear(4 * D, D)},
        },
        "ln_f": norm(),
        "head": {"kernel": normal(D, VOCAB)},
    }


def loss_sum(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed token cross-entropy and token count (one-hot pick: see the module docstring)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    picked = jnp.sum(logp * jax.nn.one_hot(labels, logits.shape[-1], dtype=logp.dtype), -1)
    return -jnp.sum(picked), jnp.asarray(labels.size, jnp.float32)


def _model() -> tuple[Callable[..., Any], ...]:
    """(init, embed, blocks, head) of titanax.models' GPT, or of the inline transformer."""
    if HAVE_MODELS:
        from titanax.models import GPTConfig, gpt_blocks, gpt_embed, gpt_head, gpt_init

        config = GPTConfig(vocab_size=VOCAB, seq_len=SEQ, d_model=D, n_heads=HEADS, n_layers=LAYERS)
        return (
            lambda key: gpt_init(config, key, stacked=True),
            lambda rest, tokens: gpt_embed(rest, tokens, config=config),
            lambda blocks, x: gpt_blocks(blocks, x, config=config),
            lambda rest, y: gpt_head(rest, y, config=config),
        )

    def blocks_fn(blocks: dict[str, Any], x: jax.Array) -> jax.Array:
        out, _ = jax.lax.scan(lambda h, p: (_block(p, h), None), x, blocks)
        return out

    return (
        _inline_init,
        lambda rest, tokens: rest["embed"]["embedding"][tokens] + rest["pos_embed"]["embedding"],
        blocks_fn,
        lambda rest, y: _ln(rest["ln_f"], y) @ rest["head"]["kernel"],
    )


INIT, EMBED, BLOCKS, HEAD = _model()


def post_fn(rest: dict[str, Any], y: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    total, count = loss_sum(HEAD(rest, y), labels)
    return total, count


def one_device_loss(params: dict[str, Any], tokens: jax.Array, labels: jax.Array) -> jax.Array:
    rest = {k: v for k, v in params.items() if k != "blocks"}
    total, count = post_fn(rest, BLOCKS(params["blocks"], EMBED(rest, tokens)), labels)
    return total / count


def _data(steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        tokens = rng.integers(0, VOCAB, (BATCH, SEQ + 1), dtype=np.int32)
        out.append((tokens[:, :-1], tokens[:, 1:]))
    return out


def _train(
    value_and_grad: Callable[..., Any],
    params: Any,
    batches: list[tuple[Any, Any]],
    place: Callable[[Any], Any] = lambda x: x,
) -> list[float]:
    opt = optax.adam(1e-2)

    def step(params: Any, opt_state: Any, tokens: Any, labels: Any) -> tuple[Any, Any, Any]:
        loss, grads = value_and_grad(params, tokens, labels)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = jax.jit(opt.init)(params)  # one program, not one eager op per leaf
    # Outputs keep the inputs' shardings, so steps 2 and 3 reuse step 1's executable (Adam's
    # step count comes out on one device: replicate it over the mesh).
    sharding = params["blocks"]["ln1"]["scale"].sharding
    if isinstance(sharding, NamedSharding):
        replicated = NamedSharding(sharding.mesh, P())
        opt_state = jax.tree.map(
            lambda a: a if isinstance(a.sharding, NamedSharding) else jax.device_put(a, replicated),
            opt_state,
        )
    shardings = jax.tree.map(lambda a: a.sharding, (params, opt_state))
    params, opt_state = jax.device_put((params, opt_state), shardings)  # committed, like outputs
    jitted = jax.jit(step, out_shardings=(*shardings, None))
    losses = []
    for tokens, labels in batches:
        params, opt_state, loss = jitted(params, opt_state, *place((tokens, labels)))
        losses.append(float(loss))  # blocks every step (CPU collectives, jax 0.10)
    return losses


@pytest.mark.devices(8)
def test_dp_pp_tp_training_matches_one_device() -> None:
    mesh = MeshSpec(axes=("data", "pipeline", "tensor"), shape=(2, 2, 2)).build()
    plan = Plan(
        data_parallel=DP("data"),
        tensor_parallel=TP("tensor", rules=tp_rules.gpt(stacked=True, pipeline_axis="pipeline")),
        pipeline_parallel=PP("pipeline", stages=2, microbatches=2, schedule="1f1b"),
    )
    params = INIT(jax.random.key(0))
    specs = plan.param_specs(params, mesh)
    assert tuple(specs["blocks"]["attn"]["q"]["kernel"]) == ("pipeline", None, "tensor")
    sharded = apply_named_sharding(params, mesh, specs)
    batches = _data(1) * 3  # one batch, three steps: the loss must fall

    fn = pipeline_value_and_grad(
        EMBED,
        BLOCKS,
        post_fn,
        mesh=mesh,
        schedule=build_schedule("1f1b", stages=2, microbatches=2),
        bubble_fill=float("nan"),
    )
    data = NamedSharding(mesh, P("data"))
    pipelined = _train(fn, sharded, batches, lambda b: jax.device_put(b, data))
    reference = _train(jax.value_and_grad(one_device_loss), params, batches)
    np.testing.assert_allclose(pipelined, reference, rtol=2e-5)
    assert pipelined[-1] < pipelined[0]


# ----- a toy model with a tied embedding, interleaved: structure, tying, layer order ---------
def _toy_params(n_layers: int) -> dict[str, Any]:
    rng = np.random.default_rng(3)

    def normal(*shape: int, scale: float) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    return {
        "embed": {"embedding": normal(VOCAB, D, scale=1.0)},
        "blocks": {"w": normal(n_layers, D, D, scale=D**-0.5), "b": normal(n_layers, D, scale=0.1)},
        "ln_f": {"scale": 1.0 + normal(D, scale=0.1)},
    }


def _toy_pre(rest: dict[str, Any], tokens: jax.Array) -> jax.Array:
    return rest["embed"]["embedding"][tokens]


def _toy_stage(blocks: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    for k in range(blocks["w"].shape[0]):
        x = x + jnp.tanh(x @ blocks["w"][k] + blocks["b"][k])
    return x


def _toy_post(rest: dict[str, Any], y: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = (y * rest["ln_f"]["scale"]) @ rest["embed"]["embedding"].T  # tied embedding
    return loss_sum(logits, labels)


def _toy_loss(params: dict[str, Any], tokens: jax.Array, labels: jax.Array) -> jax.Array:
    rest = {k: v for k, v in params.items() if k != "blocks"}
    total, count = _toy_post(rest, _toy_stage(params["blocks"], _toy_pre(rest, tokens)), labels)
    return total / count


def test_interleaved_tied_embedding_grads_match_in_natural_order() -> None:
    schedule = build_schedule("interleaved", stages=2, microbatches=4, virtual_stages=2)
    mesh = MeshSpec(axes=("pipeline",), shape=(2,), devices=2).build()
    params = _toy_params(n_layers=4)
    tokens, labels = _data(1)[0]
    fn = pipeline_value_and_grad(
        _toy_pre, _toy_stage, _toy_post, mesh=mesh, schedule=schedule, bubble_fill=float("nan")
    )
    stored = {**params, "blocks": to_storage_order(params["blocks"], schedule)}
    loss, grads = jax.tree.map(np.asarray, jax.jit(fn)(stored, tokens, labels))
    grads["blocks"] = to_natural_order(grads["blocks"], schedule)
    want_loss, want = jax.jit(jax.value_and_grad(_toy_loss))(params, tokens, labels)
    assert isinstance(grads, dict)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for (path, g), w in zip(
        jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(want), strict=True
    ):
        w = np.asarray(w)
        np.testing.assert_allclose(
            g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max(), err_msg=jax.tree_util.keystr(path)
        )


def _fn() -> Callable[..., Any]:
    mesh = MeshSpec(axes=("pipeline",), shape=(2,), devices=2).build()
    return pipeline_value_and_grad(
        EMBED,
        BLOCKS,
        post_fn,
        mesh=mesh,
        schedule=build_schedule("1f1b", stages=2, microbatches=4),
    )


def test_error_batch_not_divisible_by_microbatches() -> None:
    params = INIT(jax.random.key(0))
    tokens, labels = _data(1)[0]
    with pytest.raises(
        PipelineError, match=r"inputs batch size 6 is not divisible by microbatches=4"
    ):
        jax.eval_shape(_fn(), params, tokens[:6], labels[:6])


def test_error_batch_dims_disagree() -> None:
    params = INIT(jax.random.key(0))
    tokens, labels = _data(1)[0]
    with pytest.raises(PipelineError, match=r"every targets leaf needs the same leading batch"):
        jax.eval_shape(_fn(), params, tokens, {"a": labels, "b": labels[:4]})


def test_error_missing_blocks() -> None:
    params = INIT(jax.random.key(0))
    tokens, labels = _data(1)[0]
    params["layers"] = params.pop("blocks")
    with pytest.raises(PipelineError, match=r"stacked blocks under 'blocks'; got \["):
        jax.eval_shape(_fn(), params, tokens, labels)


def test_error_activations_value() -> None:
    mesh = MeshSpec(axes=("pipeline",), shape=(2,), devices=2).build()
    with pytest.raises(PipelineError, match=r"activations must be 'recompute' .*, got 'none'"):
        pipeline_value_and_grad(
            EMBED,
            BLOCKS,
            post_fn,
            mesh=mesh,
            schedule=build_schedule("1f1b", stages=2, microbatches=2),
            activations="none",  # type: ignore[arg-type]
        )
