"""Checkpoint costs of ``titanax.io.OrbaxCheckpointer`` on 8 simulated CPU devices.

Each of ``--repeats`` rounds (after one warm-up) times the compared operations back to back
(their order rotating); a ratio is the median of the per-round ratios, which cancels most of
the drift of a shared machine (ratios of minima and of medians go to the JSON as well):

* **async blocking / sync save** (goal <= 0.10): how long ``save()`` blocks the training loop
  with ``async_save=True`` (arrays copied off the devices, files written in the background),
  relative to a synchronous save of the same state that returns when the step is committed.
* **restore with reshard / plain Orbax restore** (goal <= 1.1): ``OrbaxCheckpointer.restore``
  of a state saved as ``data=2 × tensor=4`` into ``fsdp=8`` — strict tree check, JSON metadata
  and all — relative to a bare ``orbax.checkpoint.CheckpointManager.restore`` of the same
  arrays into the same target layout: what Titanax adds on top of Orbax.
* For information (no goal): both restores relative to a bare Orbax restore into the layout
  the arrays were saved with — the cost of resharding itself (TensorStore reads chunk parts).

Prints a table and writes ``benchmarks/results/checkpoint.json``.

Run: ``python benchmarks/checkpoint.py [--size-mb 128] [--repeats 9]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_num_cpu_devices", 8)

# The device count must be set before JAX starts its backend, so these imports come after it.
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from titanax.io import OrbaxCheckpointer  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"


def _mesh(shape: tuple[int, ...], names: tuple[str, ...]) -> jax.sharding.Mesh:
    return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def _state(size_mb: int, mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """``size_mb`` of float32 matrices [1024, 1024] in a TP/FSDP layout, plus small leaves."""
    rng = np.random.default_rng(0)
    specs = [P("data", "tensor"), P("tensor", "data"), P(None, "tensor"), P("tensor", None)]
    params = {
        f"layer{i}": jax.device_put(
            rng.standard_normal((1024, 1024), dtype=np.float32),
            NamedSharding(mesh, specs[i % len(specs)]),
        )
        for i in range(max(1, size_mb // 4))
    }
    return {
        "params": params,
        "step": jax.device_put(np.int32(1), NamedSharding(mesh, P())),
        "rng": jax.device_put(np.asarray([1, 2], np.uint32), NamedSharding(mesh, P())),
    }


def _target(state: dict[str, Any], spec_of: Callable[[Any], P], mesh: jax.sharding.Mesh) -> Any:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec_of(x))),
        state,
    )


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=128, help="state size (float32 MiB)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    scratch = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="titanax-ckpt-bench-"))
    saved_mesh = _mesh((2, 4), ("data", "tensor"))
    state = _state(args.size_mb, saved_mesh)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    saved_target = _target(state, lambda x: x.sharding.spec, saved_mesh)
    new_mesh = _mesh((8,), ("fsdp",))
    reshard_target = _target(state, lambda x: P("fsdp") if x.ndim == 2 else P(), new_mesh)

    async_dir, sync_dir = scratch / "async", scratch / "sync"
    blocking, sync_total = [], []
    with (
        OrbaxCheckpointer(async_dir, keep=2) as async_ckpt,
        OrbaxCheckpointer(sync_dir, keep=2, async_save=False) as sync_ckpt,
    ):
        for step in range(args.repeats + 1):  # step 0 warms up (Orbax compiles its slicing)
            t_block, _ = _timed(lambda s=step: async_ckpt.save(s, state, metadata={"i": s}))
            async_ckpt.wait()
            t_sync, _ = _timed(lambda s=step: sync_ckpt.save(s, state, metadata={"i": s}))
            if step:
                blocking.append(t_block)
                sync_total.append(t_sync)
        last = sync_ckpt.latest_step()

    manager = ocp.CheckpointManager(
        sync_dir,
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        },
    )

    def plain(target: Any) -> Any:
        args_ = ocp.args.Composite(state=ocp.args.StandardRestore(target))
        return manager.restore(last, args=args_)["state"]

    restores: dict[str, Callable[[], Any]] = {
        "titanax": lambda: reader.restore(last, reshard_target)[0],
        "orbax_saved_layout": lambda: plain(saved_target),
        "orbax_new_layout": lambda: plain(reshard_target),
    }
    times: dict[str, list[float]] = {name: [] for name in restores}
    names = list(restores)
    with OrbaxCheckpointer(sync_dir, keep=None) as reader:
        for i in range(args.repeats + 1):
            for name in names[i % 3 :] + names[: i % 3]:  # rotate who goes first
                gc.collect()  # free the previous result outside the timed region
                seconds, out = _timed(restores[name])
                if i:
                    times[name].append(seconds)
                if name == "titanax":
                    for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(state), strict=True):
                        if not np.array_equal(np.asarray(got), np.asarray(want)):
                            raise SystemExit("restored values differ from the saved ones")
                del out
    ours, plain_saved, plain_same = (
        times["titanax"],
        times["orbax_saved_layout"],
        times["orbax_new_layout"],
    )
    manager.close()
    shutil.rmtree(scratch, ignore_errors=True)

    med = statistics.median

    def row(metric: str, num: list[float], den: list[float], goal: float | None) -> dict[str, Any]:
        # Each repeat times numerator and denominator back to back, so the median of the
        # per-repeat ratios cancels the drift of a shared machine better than a ratio of
        # separately aggregated times (both of which are recorded too).
        ratio = med([n / d for n, d in zip(num, den, strict=True)])
        return {
            "metric": metric,
            "numerator_median_s": med(num),
            "denominator_median_s": med(den),
            "ratio": ratio,
            "ratio_of_minima": min(num) / min(den),
            "ratio_of_medians": med(num) / med(den),
            "goal": goal,
            "met": None if goal is None else ratio <= goal,
        }

    rows = [
        row("async save blocking / sync save", blocking, sync_total, 0.10),
        row("titanax restore+reshard / Orbax restore, same layout", ours, plain_same, 1.1),
        row("titanax restore+reshard / Orbax restore, saved layout", ours, plain_saved, None),
        row("Orbax restore+reshard / Orbax restore, saved layout", plain_same, plain_saved, None),
    ]
    print(
        f"state: {nbytes / 2**20:.0f} MiB in {len(jax.tree.leaves(state))} arrays, saved on "
        f"(data=2, tensor=4), restored on (fsdp=8); {args.repeats} paired repeats\n"
    )
    print("| metric | numerator (s, median) | denominator (s, median) | ratio | goal |")
    print("|---|---|---|---|---|")
    for r in rows:
        goal = "-" if r["goal"] is None else f"<= {r['goal']} ({'met' if r['met'] else 'MISSED'})"
        print(
            f"| {r['metric']} | {r['numerator_median_s']:.4f} | {r['denominator_median_s']:.4f} | "
            f"{r['ratio']:.3f} | {goal} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "checkpoint.json"
    record = {
        "size_mib": nbytes / 2**20,
        "arrays": len(jax.tree.leaves(state)),
        "repeats": args.repeats,
        "devices": 8,
        "platform": jax.devices()[0].platform,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "samples_s": {
            "async_blocking": blocking,
            "sync_save": sync_total,
            "restore_reshard_titanax": ours,
            "restore_plain_orbax_saved_layout": plain_saved,
            "restore_plain_orbax_new_layout": plain_same,
        },
        "rows": rows,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
