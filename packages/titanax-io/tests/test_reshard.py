"""Acceptance: a checkpoint saved on 8 devices as (data=2, tensor=4) restores with 1, 4 and 8
devices under DP-only, FSDP and TP=2 plans — values bit-equal to an independent NumPy
regeneration, every leaf in exactly its planned sharding, no warning about missing sharding
information. 4 and 1 devices run in two concurrent subprocesses (several restores each); the
1-device one also inspects the checkpoint without the original devices."""

from __future__ import annotations

import concurrent.futures
import pathlib
import subprocess
import textwrap
from typing import Any

import pytest

from titanax.testing import run_with_devices

# Shared by the test process and the subprocesses: the saved state (regenerated from a seed with
# NumPy, never read back from JAX), the layouts, and the check of one restore.
COMMON = textwrap.dedent(
    """
    import logging, warnings
    import jax, numpy as np
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from titanax.mesh import MeshSpec
    from titanax.sharding import DP, FSDP, TP, Plan, abstract_state, tp_rules
    from titanax.io import OrbaxCheckpointer, validate_checkpoint_compatibility

    def host_state():
        rng = np.random.default_rng(2026)
        def arr(*shape, dtype=np.float32):
            return rng.standard_normal(shape).astype(dtype)
        block = {
            "ln1": {"scale": arr(8, dtype=jnp.bfloat16), "bias": arr(8)},
            "attn": {"q": {"kernel": arr(8, 8), "bias": arr(8)},
                     "out": {"kernel": arr(8, 8), "bias": arr(8)}},
            "mlp": {"up": {"kernel": arr(8, 16), "bias": arr(16)},
                    "down": {"kernel": arr(16, 8), "bias": arr(8)}},
        }
        params = {"embed": {"embedding": arr(16, 8)}, "pos_embed": {"embedding": arr(8, 8)},
                  "blocks": [block], "ln_f": {"scale": arr(8), "bias": arr(8)},
                  "head": {"kernel": arr(8, 16)}}
        moments = lambda: jax.tree.map(lambda x: arr(*x.shape), params)
        return {"params": params,
                "opt_state": {"mu": moments(), "nu": moments(), "count": np.int32(41)},
                "step": np.int32(41), "rngs": {"dropout": np.array([7, 11], np.uint32)}}

    LAYOUTS = {
        "save": lambda n: (MeshSpec(axes=("data", "tensor"), shape=(2, 4)),
                           Plan(fsdp=FSDP("data", min_size_bytes=0),
                                tensor_parallel=TP("tensor", rules=tp_rules.gpt()))),
        "dp": lambda n: (MeshSpec(axes=("data",), shape=(n,)), Plan(data_parallel=DP("data"))),
        "fsdp": lambda n: (MeshSpec(axes=("fsdp",), shape=(n,)),
                           Plan(fsdp=FSDP("fsdp", min_size_bytes=0))),
        "tp2": lambda n: (MeshSpec(axes=("data", "tensor"), shape=(n // 2, 2)),
                          Plan(data_parallel=DP("data"),
                               tensor_parallel=TP("tensor", rules=tp_rules.gpt()))),
    }

    def planned(host, layout, n):
        spec, plan = LAYOUTS[layout](n)
        mesh = spec.build()
        p = plan.param_specs(host["params"], mesh)
        o = plan.optimizer_specs(host["params"], mesh)
        specs = {"params": p, "opt_state": {"mu": o, "nu": o, "count": P()}, "step": P(),
                 "rngs": {"dropout": P()}}
        return mesh, plan, abstract_state(host, mesh, specs)

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []
        def emit(self, record):
            self.messages.append(record.getMessage())

    def check_restores(directory, n, layouts):
        host = host_state()
        want = jax.tree.leaves(host)
        collect = Collect()
        logging.getLogger().addHandler(collect)
        out = []
        with OrbaxCheckpointer(directory) as ckpt:
            for layout in layouts:
                mesh, plan, target = planned(host, layout, n)
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # Orbax warns when sharding info is missing
                    state, meta = ckpt.restore(None, target)
                report = validate_checkpoint_compatibility(
                    meta, mesh, plan, optimizer_fingerprint="adamw-1", target=target)
                assert report.is_reshard, report.summary()
                got, planned_leaves = jax.tree.leaves(state), jax.tree.leaves(target)
                assert len(got) == len(want) == len(planned_leaves)
                sharded = 0
                for g, w, t in zip(got, want, planned_leaves):
                    assert g.sharding == t.sharding, (g.sharding, t.sharding)
                    assert g.dtype == w.dtype and g.shape == w.shape
                    np.testing.assert_array_equal(np.asarray(g), w)
                    sharded += any(e is not None for e in t.sharding.spec)
                out.append((layout, n, sharded, sorted(report.fields)))
        logging.getLogger().removeHandler(collect)
        bad = [m for m in collect.messages if "shard" in m.lower()]
        assert not bad, bad
        return out
    """
)


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Saves the state on the test process's 8 devices as (data=2, tensor=4) with FSDP + TP."""
    scope: dict[str, Any] = {}
    exec(COMMON, scope)
    directory = tmp_path_factory.mktemp("reshard") / "ckpt"
    host = scope["host_state"]()
    mesh, plan, target = scope["planned"](host, "save", 8)
    import jax

    state = jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), host, target)
    spec_of = {t.sharding.spec for t in jax.tree.leaves(target)}
    assert any("tensor" in str(s) and "data" in str(s) for s in spec_of)  # really 2-D sharded
    from titanax.io import OrbaxCheckpointer
    from titanax.mesh import MeshSpec

    with OrbaxCheckpointer(directory) as ckpt:
        ckpt.save(
            41,
            state,
            metadata={
                "mesh": MeshSpec.from_mesh(mesh).to_dict(),
                "plan": plan.to_dict(),
                "plan_fingerprint": plan.fingerprint(),
                "optimizer_fingerprint": "adamw-1",
                "data_position": 41 * 32,
            },
        )
    return directory


def _subprocess(directory: pathlib.Path, n: int, layouts: list[str], extra: str = "") -> str:
    code = (
        COMMON
        + f"\nfor row in check_restores({str(directory)!r}, {n}, {layouts!r}):\n"
        + "    print('RESTORED', *row)\n"
        + textwrap.dedent(extra)
    )
    result: subprocess.CompletedProcess[str] = run_with_devices(code, num_devices=n, timeout=180)
    return result.stdout


INSPECT_ONE_DEVICE = """
from titanax.io import inspect_checkpoint
info = inspect_checkpoint({directory!r})
assert len(jax.devices()) == 1
assert info.steps == (41,) and info.step == 41
by_path = {{leaf.path: leaf for leaf in info.leaves}}
assert by_path["params/embed/embedding"].shape == (16, 8)
assert by_path["params/blocks/0/ln1/scale"].dtype == "bfloat16"
assert by_path["rngs/dropout"].dtype == "uint32"
assert info.metadata["data_position"] == 41 * 32
print("INSPECT", len(info.leaves), by_path["params/blocks/0/attn/q/kernel"].saved_sharding)
print(info.describe())
"""


def test_restore_with_1_4_and_8_devices_under_dp_fsdp_tp(saved_checkpoint: pathlib.Path) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        four = pool.submit(_subprocess, saved_checkpoint, 4, ["dp", "fsdp", "tp2"])
        one = pool.submit(
            _subprocess,
            saved_checkpoint,
            1,
            ["dp", "fsdp"],
            INSPECT_ONE_DEVICE.format(directory=str(saved_checkpoint)),
        )
        scope: dict[str, Any] = {}
        exec(COMMON, scope)
        rows = scope["check_restores"](str(saved_checkpoint), 8, ["dp", "fsdp", "tp2"])
        out_four, out_one = four.result(), one.result()
    by_layout = {(layout, n): (sharded, fields) for layout, n, sharded, fields in rows}
    # Every restore crosses a layout: the mesh changed, and DP-only leaves nothing sharded.
    assert by_layout[("dp", 8)][0] == 0
    assert by_layout[("fsdp", 8)][0] > 0
    assert by_layout[("tp2", 8)][0] > 0
    assert "mesh.axes" in by_layout[("dp", 8)][1]
    assert "plan.tensor_parallel" in by_layout[("fsdp", 8)][1]
    assert "mesh.shape" in by_layout[("tp2", 8)][1]
    for layout in ("dp", "fsdp", "tp2"):
        assert f"RESTORED {layout} 4 " in out_four
    assert "RESTORED dp 1 0" in out_one
    assert "RESTORED fsdp 1 " in out_one
    assert "INSPECT 48 P('data', 'tensor') on data=2 × tensor=4" in out_one
