"""Pipeline schedules: per-device memory as microbatches grow, bubbles, and step time.

Model: the project's GPT (``titanax.models``: ``gpt_embed`` / ``gpt_blocks`` / ``gpt_head``),
8 layers, pipelined over p = 4 simulated CPU devices (2 layers per stage; 1 per chunk for
interleaved 1F1B with v = 2).

1. Memory — per-device ``temp_size_in_bytes`` from the compiled memory analysis
   (``jit(...).lower(...).compile().memory_analysis()``) of the compiled schedule alone
   (``make_pipeline``: the blocks' loss and gradients for ``m`` microbatches of the embedded
   batch; inputs are arguments, gradients outputs), for m = p, 2p, 4p at a fixed microbatch
   size (interleaved at m = 4p only), for both ``activations`` modes: ``"recompute"`` (each
   backward recomputes the stage forward from the stashed stage input; GPipe grows by one
   activation per microbatch) and ``"stash"`` (the forward's residuals are kept until the
   backward; GPipe keeps the residuals of m microbatches, 1F1B of at most p). Goal, per mode:
   1F1B ÷ GPipe ≤ 1.3·p/m at m = 4p. The compiled stage backward alone is measured too: in
   recompute mode it is the part no schedule changes.
2. Bubble fraction of each schedule from its tick table (unit-time F and B).
3. Step time — the whole model's loss and gradients (``pipeline_value_and_grad``, 4 devices)
   ÷ ``jax.value_and_grad`` of the same model on 1 device, same global batch (m = 2p),
   median of timed calls after a warm-up. All simulated devices share this machine's cores,
   so the ratio shows the schedule's overhead (ticks, recomputation, sends), not a speed-up.

Run: ``python benchmarks/pipeline.py``; prints tables, writes ``benchmarks/results/pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import time
from typing import Any

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")

import jax
import jax.numpy as jnp
import numpy as np

from titanax.mesh import MeshSpec
from titanax.models import (
    GPTConfig,
    cross_entropy,
    gpt_blocks,
    gpt_embed,
    gpt_head,
    gpt_init,
)
from titanax.pipeline import (
    build_schedule,
    make_pipeline,
    pipeline_value_and_grad,
    to_storage_order,
)

RESULTS = pathlib.Path(__file__).parent / "results"
P = 4
MICROBATCH = 4  # sequences per microbatch
CONFIG = GPTConfig(vocab_size=256, seq_len=64, d_model=64, n_heads=4, n_layers=8)
KINDS = (("gpipe", 1), ("1f1b", 1), ("interleaved", 2))
MODES = ("recompute", "stash")


def embed(rest: dict[str, Any], tokens: jax.Array) -> jax.Array:
    return gpt_embed(rest, tokens, config=CONFIG)


def blocks(chunk: dict[str, Any], x: jax.Array) -> jax.Array:
    return gpt_blocks(chunk, x, config=CONFIG)


def head_loss(rest: dict[str, Any], y: jax.Array, labels: jax.Array) -> tuple[jax.Array, Any]:
    return cross_entropy(gpt_head(rest, y, config=CONFIG), labels)


def one_device_loss(params: dict[str, Any], tokens: jax.Array, labels: jax.Array) -> jax.Array:
    rest = {k: v for k, v in params.items() if k != "blocks"}
    total, count = head_loss(rest, blocks(params["blocks"], embed(rest, tokens)), labels)
    return total / count


def shapes(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def memory_rows(params: dict[str, Any], mesh: jax.sharding.Mesh) -> list[dict[str, Any]]:
    rest = {k: v for k, v in params.items() if k != "blocks"}
    act = (MICROBATCH, CONFIG.seq_len, CONFIG.d_model)
    act_bytes = int(np.prod(act)) * 4
    rows = []
    for mode, (kind, v) in ((mode, kv) for mode in MODES for kv in KINDS):
        # Interleaved only at m = 4p, for reference (its chunks are half a stage's layers).
        for m in (P, 2 * P, 4 * P) if v == 1 else (4 * P,):
            schedule = build_schedule(kind, stages=P, microbatches=m, virtual_stages=v)
            fn = make_pipeline(blocks, head_loss, mesh=mesh, schedule=schedule, activations=mode)
            args = (
                shapes(params["blocks"]),
                shapes(rest),
                jax.ShapeDtypeStruct((m, *act), jnp.float32),
                jax.ShapeDtypeStruct((m, MICROBATCH, CONFIG.seq_len), jnp.int32),
            )
            analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
            rows.append(
                {
                    "activations": mode,
                    "schedule": kind,
                    "virtual_stages": v,
                    "microbatches": m,
                    "temp_bytes": int(analysis.temp_size_in_bytes),
                    "argument_bytes": int(analysis.argument_size_in_bytes),
                    "output_bytes": int(analysis.output_size_in_bytes),
                    "stash_slots": schedule.stash_size,
                    "cotangent_slots": schedule.cotangent_slots,
                    "activation_bytes": act_bytes,
                    "bubble_fraction": schedule.bubble_fraction,
                    "ticks": schedule.num_ticks,
                }
            )
            print(
                f"  memory {mode:9s} {kind:11s} m={m:2d}: "
                f"temp {rows[-1]['temp_bytes'] / 2**20:7.3f} MiB",
                flush=True,
            )
    return rows


def stage_backward_temp(params: dict[str, Any]) -> int:
    """Temp bytes of ONE stage's recomputed backward (2 layers, one microbatch) compiled alone:
    the working set every backward tick needs whatever the schedule."""
    per_stage = CONFIG.n_layers // P
    chunk = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((per_stage, *a.shape[1:]), a.dtype), params["blocks"]
    )
    x = jax.ShapeDtypeStruct((MICROBATCH, CONFIG.seq_len, CONFIG.d_model), jnp.float32)

    def stage_vjp(prm: Any, x: jax.Array, g: jax.Array) -> Any:
        _, vjp = jax.vjp(blocks, prm, x)
        return vjp(g)

    return int(jax.jit(stage_vjp).lower(chunk, x, x).compile().memory_analysis().temp_size_in_bytes)


def _median_time(fn: Any, args: tuple[Any, ...], repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))  # blocked: CPU collectives must not queue (jax 0.10)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def step_rows(
    params: dict[str, Any], mesh: jax.sharding.Mesh, repeats: int
) -> list[dict[str, Any]]:
    m = 2 * P
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CONFIG.vocab_size, (m * MICROBATCH, CONFIG.seq_len + 1), np.int32)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    base = _median_time(
        jax.jit(jax.value_and_grad(one_device_loss)), (params, inputs, labels), repeats
    )
    rows = [{"schedule": "unpipelined (1 device)", "step_s": base, "ratio": 1.0}]
    for mode, (kind, v) in ((mode, kv) for mode in MODES for kv in KINDS):
        schedule = build_schedule(kind, stages=P, microbatches=m, virtual_stages=v)
        fn = jax.jit(
            pipeline_value_and_grad(
                embed, blocks, head_loss, mesh=mesh, schedule=schedule, activations=mode
            )
        )
        stored = {**params, "blocks": to_storage_order(params["blocks"], schedule)}
        seconds = _median_time(fn, (stored, inputs, labels), repeats)
        rows.append(
            {"activations": mode, "schedule": kind, "step_s": seconds, "ratio": seconds / base}
        )
        print(f"  step {mode:9s} {kind:11s}: {seconds * 1e3:8.2f} ms", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    print("compiling 16 pipelined programs for the memory table, then 7 timed steps", flush=True)
    mesh = MeshSpec(axes=("pipeline",), shape=(P,), devices=P).build()
    params = gpt_init(CONFIG, jax.random.key(0), stacked=True)
    memory = memory_rows(params, mesh)
    stage_temp = stage_backward_temp(params)
    steps = step_rows(params, mesh, args.repeats)

    print(
        f"\nGPT d_model={CONFIG.d_model}, seq={CONFIG.seq_len}, layers={CONFIG.n_layers}; "
        f"p={P}, microbatch={MICROBATCH} sequences "
        f"(one activation A = {memory[0]['activation_bytes'] / 1024:.0f} KiB)\n"
    )
    print(
        "| activations | schedule | m | ticks | bubble | stash + cotangent slots "
        "| temp / device (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in memory:
        print(
            f"| {row['activations']} | {row['schedule']} | {row['microbatches']} | "
            f"{row['ticks']} | {row['bubble_fraction']:.3f} | "
            f"{row['stash_slots']} + {row['cotangent_slots']} | "
            f"{row['temp_bytes'] / 2**20:.3f} |"
        )
    temp = {(r["activations"], r["schedule"], r["microbatches"]): r["temp_bytes"] for r in memory}
    m_big = 4 * P
    goal = 1.3 * P / m_big
    act_bytes = memory[0]["activation_bytes"]
    ratios = {mode: temp[(mode, "1f1b", m_big)] / temp[(mode, "gpipe", m_big)] for mode in MODES}
    growth = {
        mode: {
            kind: (temp[(mode, kind, m_big)] - temp[(mode, kind, P)]) / ((m_big - P) * act_bytes)
            for kind in ("gpipe", "1f1b")
        }
        for mode in MODES
    }
    print()
    for mode in MODES:
        print(
            f"{mode}: 1F1B ÷ GPipe temp at m = {m_big}: {ratios[mode]:.3f} (goal <= 1.3·p/m = "
            f"{goal:.3f}: {'met' if ratios[mode] <= goal else 'NOT met'}); growth per extra "
            "microbatch, in activations A: "
            + ", ".join(f"{k} {g:.2f}" for k, g in growth[mode].items())
        )
    rest_a = (temp[("recompute", "1f1b", P)] - stage_temp) / act_bytes
    print(
        f"Where recompute 1F1B's {temp[('recompute', '1f1b', P)] / 2**20:.3f} MiB go: one "
        f"stage's recomputed backward compiled alone needs {stage_temp / 2**20:.3f} MiB "
        f"({stage_temp / act_bytes:.0f} A); the pipeline adds {rest_a:.0f} A (stash, cotangent "
        "slot, messages, gradient sums). Only the stash depends on the schedule."
    )
    print("\n| activations | step (m = 2p) | median (ms) | ÷ unpipelined |\n|---|---|---|---|")
    for row in steps:
        print(
            f"| {row.get('activations', '-')} | {row['schedule']} | {row['step_s'] * 1e3:.2f} | "
            f"{row['ratio']:.2f} |"
        )

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "pipeline.json"
    out.write_text(
        json.dumps(
            {
                "model": {
                    "d_model": CONFIG.d_model,
                    "seq_len": CONFIG.seq_len,
                    "n_layers": CONFIG.n_layers,
                    "n_heads": CONFIG.n_heads,
                    "vocab_size": CONFIG.vocab_size,
                },
                "stages": P,
                "microbatch_sequences": MICROBATCH,
                "memory": memory,
                "one_f_one_b_over_gpipe_at_4p": ratios,
                "goal": goal,
                "goal_met": {mode: ratio <= goal for mode, ratio in ratios.items()},
                "growth_per_microbatch_in_activations": growth,
                "one_stage_backward_temp_bytes": stage_temp,
                "step": steps,
                "seconds": time.perf_counter() - start,
                "jax": jax.__version__,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
