"""Communication per step: bytes read from the compiled HLO ÷ the analytic minimum of the layout.

For a small GPT on 8 simulated CPU devices (no training: dry runs through ``Engine.compile``),
every collective of the compiled step is turned into the bytes one device sends with the
bandwidth-optimal (ring) algorithm — all-reduce ``2(n−1)/n·B``, all-gather ``(n−1)/n·B`` (``B`` its
result), reduce-scatter ``(n−1)·B``, all-to-all ``(n−1)/n·B``, collective-permute ``B`` — and
compared with the minimum the layout needs:

* DP over n: one all-reduce of the gradients: ``2(n−1)/n · grad_bytes``;
* FSDP over n: all-gather of the parameters + reduce-scatter of the gradients:
  ``2(n−1)/n · param_bytes`` (ZeRO-3 with the gathered parameters kept for the backward);
* Megatron TP over n: per block two all-reduces of the ``[batch, seq, d_model]`` activations
  forward and two backward, one for the vocab-parallel embedding (forward) and one for the
  column-parallel head (backward), and three ``[batch, seq]`` reductions of the vocab-parallel
  cross-entropy: ``2(n−1)/n · ((4L + 2)·b·s·d + 3·b·s) · 4 bytes``.

Goal: ratio ≤ 1.05. A ratio above it says XLA chose something costlier (e.g. an all-reduce where a
reduce-scatter suffices) — the table shows which collectives it used.

Run: ``python benchmarks/communication.py``; writes ``benchmarks/results/communication.json``.
"""

from __future__ import annotations

import json
import os
import pathlib
from functools import partial
from typing import Any

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")

import jax
import jax.numpy as jnp
import optax

from titanax.exec import CompileReport, Engine, TrainState, step_fn
from titanax.mesh import MeshSpec
from titanax.models import GPTConfig, gpt_init, gpt_loss
from titanax.sharding import DP, FSDP, TP, Plan, tp_rules

RESULTS = pathlib.Path(__file__).parent / "results"
CONFIG = GPTConfig(vocab_size=256, seq_len=64, d_model=128, n_heads=4, n_layers=2)
BATCH = 32


@step_fn
def train_step(state: TrainState, batch: Any) -> Any:
    loss, grads = state.value_and_grad(partial(gpt_loss, config=CONFIG))(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


def traffic(report: CompileReport, sizes: dict[str, int]) -> tuple[float, dict[str, float]]:
    """Bytes sent per device per step under ring algorithms, total and per collective kind."""
    per_kind: dict[str, float] = {}
    for c in report.collectives:
        n = 1
        for axis in c.axes:
            n *= sizes[axis]
        if n <= 1:
            continue
        factor = {
            "all-reduce": 2 * (n - 1) / n,
            "all-gather": (n - 1) / n,
            "reduce-scatter": float(n - 1),
            "all-to-all": (n - 1) / n,
            "collective-permute": 1.0,
        }[c.kind]
        per_kind[c.kind] = per_kind.get(c.kind, 0.0) + factor * c.bytes
    return sum(per_kind.values()), per_kind


def main() -> None:
    n = jax.device_count()
    tensor = 4 if n >= 4 else n
    batch = {
        "inputs": jax.ShapeDtypeStruct((BATCH, CONFIG.seq_len), jnp.int32),
        "targets": jax.ShapeDtypeStruct((BATCH, CONFIG.seq_len), jnp.int32),
    }
    param_bytes = 4 * sum(
        x.size
        for x in jax.tree.leaves(jax.eval_shape(partial(gpt_init, CONFIG), jax.random.key(0)))
    )
    bsd = BATCH * CONFIG.seq_len * CONFIG.d_model * 4
    bs = BATCH * CONFIG.seq_len * 4
    layouts = {
        "DP": (
            MeshSpec(axes=("data",), shape=(n,)),
            Plan(data_parallel=DP("data")),
            2 * (n - 1) / n * param_bytes,
            f"all-reduce of {param_bytes} gradient bytes",
        ),
        "FSDP": (
            MeshSpec(axes=("fsdp",), shape=(n,)),
            Plan(fsdp=FSDP("fsdp", min_size_bytes=0)),
            2 * (n - 1) / n * param_bytes,
            f"all-gather + reduce-scatter of {param_bytes} parameter bytes",
        ),
        "TP": (
            MeshSpec(axes=("data", "tensor"), shape=(1, tensor), devices=tensor),
            Plan(data_parallel=DP("data"), tensor_parallel=TP("tensor", rules=tp_rules.gpt())),
            2 * (tensor - 1) / tensor * ((4 * CONFIG.n_layers + 2) * bsd + 3 * bs),
            f"(4·{CONFIG.n_layers}+2) all-reduces of [b,s,d] + 3 of [b,s]",
        ),
    }
    rows = []
    for name, (mesh, plan, minimum, what) in layouts.items():
        engine = Engine(mesh, plan, optimizer=optax.sgd(0.1))
        abstract = engine.abstract_state(partial(gpt_init, CONFIG), jax.random.key(0))
        report = engine.compile(train_step, batch, state=abstract)
        sizes = {str(k): int(v) for k, v in engine.mesh.shape.items()}
        total, per_kind = traffic(report, sizes)
        rows.append(
            {
                "layout": name,
                "mesh": sizes,
                "hlo_bytes_sent": total,
                "analytic_min_bytes": minimum,
                "ratio": total / minimum,
                "analytic_model": what,
                "per_kind": per_kind,
                "collectives": [
                    {"kind": c.kind, "bytes": c.bytes, "axes": list(c.axes)}
                    for c in report.collectives
                ],
            }
        )
    print(
        f"Communication per step vs analytic minimum — GPT {CONFIG}, batch {BATCH}, "
        f"jax {jax.__version__}, {n} {jax.devices()[0].platform} devices"
    )
    print("| layout | mesh | HLO bytes sent | analytic minimum | ratio (goal ≤ 1.05) | by kind |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        kinds = ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in sorted(r["per_kind"].items()))
        mesh = "×".join(f"{k}={v}" for k, v in r["mesh"].items())
        print(
            f"| {r['layout']} | {mesh} | {r['hlo_bytes_sent'] / 2**20:.2f} MiB | "
            f"{r['analytic_min_bytes'] / 2**20:.2f} MiB | {r['ratio']:.3f} | {kinds} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "communication.json"
    out.write_text(json.dumps({"jax": jax.__version__, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
