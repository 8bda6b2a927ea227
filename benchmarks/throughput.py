"""Training throughput and MFU of the GPT example (accelerator mode; runs unchanged on CPU).

On an accelerator: GPT-2 small (124M) and a ~1B GPT, bf16 compute with fp32 master weights, on
one device — and DP / FSDP / TP variants when several devices exist. Tokens/s come from the
steady-state step time; MFU = model FLOPs per token (``gpt_flops_per_token``: 6·N plus the
attention term, PaLM appendix B) × tokens/s ÷ (peak bf16 FLOP/s per device × devices), with the
peak from ``titanax.exec.PEAK_BF16_FLOPS``. On CPU a tiny GPT runs and MFU is reported as not
meaningful (CPUs have no entry in the peak table).

Run: ``python benchmarks/throughput.py [--steps 20]``;
writes ``benchmarks/results/throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time
from functools import partial
from typing import Any

import jax
import numpy as np
import optax

from titanax.exec import Engine, Precision, TrainState, peak_flops_per_device, step_fn
from titanax.mesh import MeshSpec
from titanax.models import GPTConfig, gpt_flops_per_token, gpt_init, gpt_loss, gpt_param_count
from titanax.sharding import DP, FSDP, TP, Plan, tp_rules

RESULTS = pathlib.Path(__file__).parent / "results"

MODELS = {
    "gpt2-small-124M": (
        GPTConfig(vocab_size=50304, seq_len=1024, d_model=768, n_heads=12, n_layers=12),
        8,
    ),
    "gpt-1B": (GPTConfig(vocab_size=50304, seq_len=2048, d_model=2048, n_heads=16, n_layers=18), 4),
    "cpu-tiny": (GPTConfig(vocab_size=256, seq_len=128, d_model=128, n_heads=4, n_layers=4), 16),
}


def run(
    name: str, config: GPTConfig, batch: int, mesh: MeshSpec, plan: Plan, steps: int
) -> dict[str, Any]:
    precision = Precision(compute_dtype="bfloat16")
    engine = Engine(mesh, plan, optimizer=optax.adamw(1e-4), precision=precision)
    state = engine.create_state(partial(gpt_init, config, stacked=True), jax.random.key(0))

    @step_fn(remat="full")
    def train_step(state: TrainState, b: Any) -> Any:
        loss_fn = partial(
            gpt_loss, config=config, compute_dtype=precision.compute_dtype, remat=state.remat
        )
        loss, grads = state.value_and_grad(loss_fn)(state.params, b)
        return state.apply_gradients(grads=grads), {"loss": loss}

    rng = np.random.default_rng(0)
    replicas = int(np.prod([engine.mesh.shape[a] for a in engine.plan.data_axes]))
    global_batch = batch * replicas  # per-replica batch × data-parallel degree
    tokens = rng.integers(0, config.vocab_size, (global_batch, config.seq_len + 1), dtype=np.int32)
    host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    device_batch = engine.to_global(host)
    state, metrics = engine.step(train_step, state, device_batch)  # compile
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = engine.step(train_step, state, device_batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    tokens_per_s = global_batch * config.seq_len / step_s
    peak = peak_flops_per_device()
    flops = gpt_flops_per_token(config)
    mfu = None if peak is None else flops * tokens_per_s / (peak * jax.device_count())
    return {
        "model": name,
        "params": gpt_param_count(config),
        "mesh": {str(k): int(v) for k, v in engine.mesh.shape.items()},
        "global_batch": global_batch,
        "step_s": step_s,
        "tokens_per_s": tokens_per_s,
        "model_flops_per_token": flops,
        "peak_flops_per_device": peak,
        "mfu": mfu,
        "loss": float(metrics["loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    device = jax.devices()[0]
    n = jax.device_count()
    accelerator = device.platform != "cpu"
    names = ["gpt2-small-124M", "gpt-1B"] if accelerator else ["cpu-tiny"]
    rows = []
    for name in names:
        config, batch = MODELS[name]
        layouts = [
            (
                "1 device",
                MeshSpec(axes=("data",), shape=(1,), devices=1),
                Plan(data_parallel=DP("data")),
            )
        ]
        if n > 1:
            layouts += [
                ("DP", MeshSpec(axes=("data",), shape=(n,)), Plan(data_parallel=DP("data"))),
                ("FSDP", MeshSpec(axes=("fsdp",), shape=(n,)), Plan(fsdp=FSDP("fsdp"))),
                (
                    "TP",
                    MeshSpec(axes=("data", "tensor"), shape=(n // 2, 2)),
                    Plan(
                        data_parallel=DP("data"),
                        tensor_parallel=TP("tensor", rules=tp_rules.gpt(stacked=True)),
                    ),
                ),
            ]
        for label, mesh, plan in layouts:
            row = run(name, config, batch, mesh, plan, args.steps)
            row["layout"] = label
            rows.append(row)
    print(
        f"Throughput — {n} × {device.device_kind} ({device.platform}), jax {jax.__version__}, "
        "bf16 compute, fp32 master weights, full remat"
    )
    print("| model | layout | params | global batch | step | tokens/s | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = "not meaningful on CPU" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(
            f"| {r['model']} | {r['layout']} | {r['params'] / 1e6:.1f}M | {r['global_batch']} | "
            f"{1e3 * r['step_s']:.1f} ms | {r['tokens_per_s']:,.0f} | {mfu} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "throughput.json"
    out.write_text(
        json.dumps({"jax": jax.__version__, "device": device.device_kind, "rows": rows}, indent=2)
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
