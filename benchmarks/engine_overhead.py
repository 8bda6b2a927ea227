"""Engine overhead: the Engine's step vs a hand-written ``jax.jit`` step with the same shardings.

On 8 simulated CPU devices (or the devices present), for DP, FSDP, TP and DP×TP layouts of a
small GPT, side by side in one process:

* steady-state step time of ``Engine.step`` (host batch in, as ``fit`` does) ÷ a hand-written
  ``jax.jit(step, in_shardings, out_shardings, donate_argnums=0)`` over ``(params, opt_state)``
  with ``device_put`` of the same host batch (goal ≤ 1.02); timed in alternating blocks, medians;
* compile-time ratio, Engine ÷ hand-written (``lower`` + ``compile``; goal ≤ 1.10);
* device-to-host transfers between log points: the Engine's steps run under
  ``jax.transfer_guard_device_to_host("disallow_explicit")``; 0 means none happened (goal 0).

Both sides follow the same CPU policy: on the CPU backend of jax < 0.12 every step is awaited
before the next (that runtime aborts with several collective programs in flight); elsewhere a
block of steps is awaited at its end only.

Run: ``python benchmarks/engine_overhead.py [--steps 20] [--rounds 5]``; writes
``benchmarks/results/engine_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import time
from functools import partial
from typing import Any

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from titanax.exec import Engine, TrainState, step_fn
from titanax.mesh import MeshSpec
from titanax.models import GPTConfig, gpt_init, gpt_loss
from titanax.sharding import DP, FSDP, TP, Plan, tp_rules

RESULTS = pathlib.Path(__file__).parent / "results"
CONFIG = GPTConfig(vocab_size=256, seq_len=64, d_model=128, n_heads=4, n_layers=2)
BATCH = 32
BOUND = jax.default_backend() == "cpu" and tuple(int(p) for p in jax.__version__.split(".")[:2]) < (
    0,
    12,
)


def loss_fn(params: Any, batch: Any) -> Any:
    return gpt_loss(params, batch, config=CONFIG)


@step_fn
def engine_step(state: TrainState, batch: Any) -> Any:
    loss, grads = state.value_and_grad(loss_fn)(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


def layouts() -> dict[str, tuple[MeshSpec, Plan]]:
    n = jax.device_count()
    tensor = 2 if n % 2 == 0 and n > 1 else 1
    rules = tp_rules.gpt()
    return {
        "DP": (MeshSpec(axes=("data",), shape=(-1,)), Plan(data_parallel=DP("data"))),
        "FSDP": (MeshSpec(axes=("fsdp",), shape=(-1,)), Plan(fsdp=FSDP("fsdp"))),
        "TP": (
            MeshSpec(axes=("data", "tensor"), shape=(1, tensor), devices=tensor),
            Plan(data_parallel=DP("data"), tensor_parallel=TP("tensor", rules=rules)),
        ),
        "DPxTP": (
            MeshSpec(axes=("data", "tensor"), shape=(-1, tensor)),
            Plan(data_parallel=DP("data"), tensor_parallel=TP("tensor", rules=rules)),
        ),
    }


def host_batches(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CONFIG.vocab_size, (n, BATCH, CONFIG.seq_len + 1)).astype(np.int32)
    return [{"inputs": t[:, :-1], "targets": t[:, 1:]} for t in tokens]


def hand_written(engine: Engine, tx: optax.GradientTransformation) -> tuple[Any, Any, float]:
    """What a JAX expert writes: same shardings, plain (params, opt_state), donation."""
    state = engine.state
    assert state is not None
    shardings = engine.state_shardings(state)
    params_sh, opt_sh = shardings.params, shardings.opt_state
    replicated = NamedSharding(engine.mesh, P())
    batch_sh = engine.batch_shardings(host_batches(1)[0])

    fsdp = engine.plan.fsdp
    compute_sh = params_sh
    if fsdp is not None:  # the expert's FSDP: gather params for compute, reduce-scatter grads
        compute_sh = jax.tree.map(
            lambda s: NamedSharding(s.mesh, P(*(None if e == fsdp.axis else e for e in s.spec))),
            params_sh,
        )

    def step(params: Any, opt_state: Any, batch: Any) -> Any:
        batch = jax.lax.with_sharding_constraint(batch, batch_sh)
        gathered = jax.lax.with_sharding_constraint(params, compute_sh)
        loss, grads = jax.value_and_grad(loss_fn)(gathered, batch)
        grads = jax.lax.with_sharding_constraint(grads, params_sh)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss}

    jitted = jax.jit(
        step,
        in_shardings=(params_sh, opt_sh, batch_sh),
        out_shardings=(params_sh, opt_sh, replicated),
        donate_argnums=(0, 1),
    )
    params = jax.tree.map(jnp.copy, state.params)
    opt_state = jax.tree.map(jnp.copy, state.opt_state)
    batch = jax.tree.map(jax.device_put, host_batches(1)[0], batch_sh)
    start = time.perf_counter()
    compiled = jitted.lower(params, opt_state, batch).compile()
    seconds = time.perf_counter() - start
    return compiled, (params, opt_state, batch_sh), seconds


def time_block(run_one: Any, batches: list[dict[str, np.ndarray]]) -> float:
    start = time.perf_counter()
    out = None
    for batch in batches:
        out = run_one(batch)
        if BOUND:
            jax.block_until_ready(out)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / len(batches)


def measure(name: str, mesh: MeshSpec, plan: Plan, steps: int, rounds: int) -> dict[str, Any]:
    tx = optax.adamw(1e-3)
    engine = Engine(mesh, plan, optimizer=tx)
    engine.create_state(partial(gpt_init, CONFIG), jax.random.key(0))
    batches = host_batches(steps)
    baseline, (params, opt_state, batch_sh), base_compile = hand_written(engine, tx)
    state = engine.state
    state, _ = engine.step(engine_step, state, batches[0])
    jax.block_until_ready(state)
    engine_compile = engine.compile_seconds[-1]
    holder = {"state": state, "params": params, "opt": opt_state}

    def run_engine(batch: dict[str, np.ndarray]) -> Any:
        holder["state"], metrics = engine.step(engine_step, holder["state"], batch)
        return metrics

    def run_base(batch: dict[str, np.ndarray]) -> Any:
        placed = jax.tree.map(jax.device_put, batch, batch_sh)
        holder["params"], holder["opt"], metrics = baseline(holder["params"], holder["opt"], placed)
        return metrics

    time_block(run_engine, batches[:3])  # warm-up both
    time_block(run_base, batches[:3])
    engine_times, base_times = [], []
    for r in range(rounds):
        order = [(run_engine, engine_times), (run_base, base_times)]
        for fn, bucket in order if r % 2 == 0 else order[::-1]:
            bucket.append(time_block(fn, batches))
    with jax.transfer_guard_device_to_host("disallow_explicit"):
        for batch in batches[:5]:
            holder["state"], metrics = engine.step(engine_step, holder["state"], batch)
            if BOUND:
                jax.block_until_ready(metrics)
    engine_step_s = statistics.median(engine_times)
    base_step_s = statistics.median(base_times)
    return {
        "layout": name,
        "mesh": dict(engine.mesh.shape),
        "engine_step_s": engine_step_s,
        "handwritten_step_s": base_step_s,
        "step_time_ratio": engine_step_s / base_step_s,
        "engine_compile_s": engine_compile,
        "handwritten_compile_s": base_compile,
        "compile_time_ratio": engine_compile / base_compile,
        "d2h_transfers_between_log_points": 0,  # the guard above raised on any
        "recompiles": engine.recompiles(engine_step),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = [measure(n, m, p, args.steps, args.rounds) for n, (m, p) in layouts().items()]
    print(
        f"Engine vs hand-written jax.jit — {jax.device_count()} {jax.devices()[0].platform} "
        f"devices, jax {jax.__version__}, "
        f"{'each step awaited (CPU, jax < 0.12)' if BOUND else 'no waits between log points'}"
    )
    print(
        "| layout | mesh | engine step | hand-written | ratio (≤1.02) | compile ratio (≤1.10) "
        "| D2H between logs |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mesh = "×".join(f"{k}={v}" for k, v in r["mesh"].items())
        print(
            f"| {r['layout']} | {mesh} | {1e3 * r['engine_step_s']:.2f} ms | "
            f"{1e3 * r['handwritten_step_s']:.2f} ms | {r['step_time_ratio']:.3f} | "
            f"{r['compile_time_ratio']:.3f} ({r['engine_compile_s']:.2f} s / "
            f"{r['handwritten_compile_s']:.2f} s) | {r['d2h_transfers_between_log_points']} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "engine_overhead.json"
    meta = {"jax": jax.__version__, "devices": jax.device_count(), "awaited_each_step": BOUND}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
