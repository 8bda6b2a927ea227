"""The compiled executor against the unpipelined model and the reference executor.

18 configurations (p in {2, 4} × m in {p, 2p, 4p} × GPipe / 1F1B / interleaved with v = 2),
each compiled once (module-scoped fixture) with NaN in every bubble, idle send and unused
slot, so a read of anything the schedule did not produce poisons loss or gradients. Stashed
activations (``activations="stash"``): 6 configurations covering every schedule at p = 2 and
p = 4 and m = p and 2p, and the compiled program's branches checked for the stage forward.

Tolerance: float32, rtol 1e-5, plus an absolute 1e-5 × (largest |value| of the leaf) for
entries that nearly cancel — the pipeline sums microbatch contributions in another order than
the unpipelined batch, so rounding errors of the leaf's big entries land on its small ones.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from titanax.mesh import MeshSpec
from titanax.pipeline import (
    Op,
    PipelineError,
    PipelineOutput,
    Schedule,
    build_schedule,
    make_pipeline,
    reference_pipeline,
    to_natural_order,
    to_storage_order,
)
from titanax.testing import assert_same_structure

D, MB, OUT = 8, 2, 3
RTOL = 1e-5


def assert_close(actual: Any, expected: Any) -> None:
    """Structure first (titanax.testing), then each leaf within rtol and a leaf-scaled atol."""
    assert_same_structure(actual, expected)
    for (path, a), e in zip(
        jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True
    ):
        e = np.asarray(e)
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        np.testing.assert_allclose(
            np.asarray(a), e, rtol=RTOL, atol=RTOL * scale, err_msg=jax.tree_util.keystr(path)
        )


def stage_fn(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """A chunk of residual tanh layers (a Python loop: chunks hold 1 or 2 layers)."""
    for k in range(params["w"].shape[0]):
        x = x + jnp.tanh(x @ params["w"][k] + params["b"][k])
    return x


def loss_fn(
    head: dict[str, jax.Array], y: jax.Array, target: jax.Array
) -> tuple[jax.Array, jax.Array]:
    r = y @ head["w"] - target
    return jnp.sum(r * r), jnp.asarray(r.size, jnp.float32)


def make_problem(n_layers: int, m: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)

    def normal(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    return {
        "blocks": {"w": normal(n_layers, D, D, scale=D**-0.5), "b": normal(n_layers, D, scale=0.1)},
        "head": {"w": normal(D, OUT, scale=D**-0.5)},
        "inputs": normal(m, MB, D),
        "targets": normal(m, MB, OUT),
    }


@jax.jit
def _unpipelined(blocks: Any, head: Any, inputs: jax.Array, targets: jax.Array) -> tuple[Any, ...]:
    def total(blocks: Any, head: Any, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        return loss_fn(head, stage_fn(blocks, inputs.reshape(-1, D)), targets.reshape(-1, OUT))

    return jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)(blocks, head, inputs)


def unpipelined(problem: dict[str, Any]) -> PipelineOutput:
    """Loss and gradients of the plain model on the flattened batch (one device)."""
    (loss, count), grads = _unpipelined(
        problem["blocks"], problem["head"], problem["inputs"], problem["targets"]
    )
    return PipelineOutput(
        loss_sum=loss,
        count=count,
        stage_grads=grads[0],
        head_grads=grads[1],
        input_grads=grads[2],
        trace=None,
    )


def pipeline_mesh(p: int) -> jax.sharding.Mesh:
    return MeshSpec(axes=("pipeline",), shape=(p,), devices=p).build()


CONFIGS = [
    (kind, p, factor * p)
    for kind, p, factor in itertools.product(("gpipe", "1f1b", "interleaved"), (2, 4), (1, 2, 4))
]


def _run(
    kind: str,
    p: int,
    m: int,
    *,
    per_chunk: int = 1,
    keep_arrays: bool = False,
    activations: Any = "recompute",
) -> dict[str, Any]:
    v = 2 if kind == "interleaved" else 1
    schedule = build_schedule(kind, stages=p, microbatches=m, virtual_stages=v)  # type: ignore[arg-type]
    problem = make_problem(n_layers=per_chunk * p * v, m=m, seed=p * 100 + m)
    pipe = make_pipeline(
        stage_fn,
        loss_fn,
        mesh=pipeline_mesh(p),
        schedule=schedule,
        bubble_fill=float("nan"),
        trace=True,
        activations=activations,
    )
    out = jax.jit(pipe)(
        to_storage_order(problem["blocks"], schedule),
        problem["head"],
        problem["inputs"],
        problem["targets"],
    )
    jax.block_until_ready(out)  # CPU collectives must not queue up (jax 0.10)
    if not keep_arrays:
        out = jax.tree.map(np.asarray, out)
    return {"schedule": schedule, "problem": problem, "out": out}


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"{c[0]}-p{c[1]}-m{c[2]}")
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _run(*request.param)


def _natural(out: PipelineOutput, schedule: Schedule) -> PipelineOutput:
    return PipelineOutput(
        loss_sum=out.loss_sum,
        count=out.count,
        stage_grads=to_natural_order(out.stage_grads, schedule),
        head_grads=out.head_grads,
        input_grads=out.input_grads,
        trace=None,
    )


def test_compiled_equals_unpipelined(config: dict[str, Any]) -> None:
    got = _natural(config["out"], config["schedule"])
    want = unpipelined(config["problem"])
    assert np.all(np.isfinite(np.asarray(got.input_grads)))  # NaN fill never leaked
    assert_close(got, want)


def test_compiled_trace_follows_the_table(config: dict[str, Any]) -> None:
    schedule, trace = config["schedule"], np.asarray(config["out"].trace)
    assert trace.shape == (schedule.num_ticks, schedule.stages, 4)
    busy = schedule.op != Op.IDLE
    np.testing.assert_array_equal(trace[..., 0], schedule.op)
    # The microbatch tags travelled with the data through slots and ppermutes.
    np.testing.assert_array_equal(trace[..., 1], np.where(busy, schedule.microbatch, -1))
    np.testing.assert_array_equal(trace[..., 3], np.where(busy, schedule.chunk, -1))


def test_reference_agrees_tick_by_tick_and_numerically(config: dict[str, Any]) -> None:
    schedule, problem = config["schedule"], config["problem"]
    ref = reference_pipeline(
        stage_fn,
        loss_fn,
        schedule=schedule,
        stage_params=problem["blocks"],
        head_params=problem["head"],
        inputs=problem["inputs"],
        targets=problem["targets"],
    )
    np.testing.assert_array_equal(np.asarray(config["out"].trace), np.asarray(ref.trace))
    assert_close(PipelineOutput(**{**vars_of(ref), "trace": None}), unpipelined(problem))


def vars_of(out: PipelineOutput) -> dict[str, Any]:
    return {
        name: getattr(out, name)
        for name in ("loss_sum", "count", "stage_grads", "head_grads", "input_grads", "trace")
    }


def test_gpipe_with_fewer_microbatches_than_stages_is_correct() -> None:
    result = _run("gpipe", 4, 2, per_chunk=2)  # two layers per stage
    got = _natural(result["out"], result["schedule"])
    assert_close(got, unpipelined(result["problem"]))


def test_result_is_replicated_and_grads_stay_sharded() -> None:
    result = _run("1f1b", 2, 2, keep_arrays=True)
    out = result["out"]
    assert out.loss_sum.sharding.is_fully_replicated
    assert out.input_grads.sharding.is_fully_replicated
    assert tuple(out.stage_grads["w"].sharding.spec)[:1] == ("pipeline",)
    # Without trace=True there is no trace output.
    problem = result["problem"]
    pipe = make_pipeline(
        stage_fn, loss_fn, mesh=pipeline_mesh(2), schedule=result["schedule"], trace=False
    )
    shaped = jax.eval_shape(
        pipe, problem["blocks"], problem["head"], problem["inputs"], problem["targets"]
    )
    assert shaped.trace is None


@pytest.mark.devices(4)
def test_explicit_data_axis() -> None:
    """With Explicit axes nothing is resharded for us: buffers follow the inputs' sharding."""
    mesh = MeshSpec(
        axes=("data", "pipeline"), shape=(2, 2), devices=4, axis_types="explicit"
    ).build()
    schedule = build_schedule("1f1b", stages=2, microbatches=2)
    problem = make_problem(2, 2)
    pipe = make_pipeline(stage_fn, loss_fn, mesh=mesh, schedule=schedule, bubble_fill=np.nan)
    batch = NamedSharding(mesh, P(None, "data"))
    args = (
        jax.device_put(problem["blocks"], NamedSharding(mesh, P("pipeline"))),
        jax.device_put(problem["head"], NamedSharding(mesh, P())),
        jax.device_put(problem["inputs"], batch),
        jax.device_put(problem["targets"], batch),
    )
    with jax.set_mesh(mesh):
        out = jax.tree.map(np.asarray, jax.jit(pipe)(*args))
    assert_close(out, unpipelined(problem))


# ----- stashed activations --------------------------------------------------------------------
STASH_CONFIGS = [
    ("gpipe", 2, 4),
    ("gpipe", 4, 4),
    ("1f1b", 2, 2),
    ("1f1b", 4, 8),
    ("interleaved", 2, 4),
    ("interleaved", 4, 4),
]


@pytest.fixture(scope="module", params=STASH_CONFIGS, ids=lambda c: f"{c[0]}-p{c[1]}-m{c[2]}")
def stash_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _run(*request.param, activations="stash")


def test_stash_equals_unpipelined(stash_config: dict[str, Any]) -> None:
    schedule, out = stash_config["schedule"], stash_config["out"]
    assert np.all(np.isfinite(np.asarray(out.input_grads)))  # NaN fill never leaked
    assert_close(_natural(out, schedule), unpipelined(stash_config["problem"]))
    tags = np.where(schedule.op != Op.IDLE, schedule.microbatch, -1)
    np.testing.assert_array_equal(np.asarray(out.trace)[..., 1], tags)


def _tanh_per_branch(activations: str) -> list[int]:
    """Per branch of the compiled per-tick switch (idle, F, B[, B on the last stage]): how
    many ``tanh`` ops (the stage forward's only transcendental; its derivative reuses the
    output) that branch and everything it calls contain."""
    schedule = build_schedule("1f1b", stages=2, microbatches=2)
    problem = make_problem(2, 2)
    pipe = make_pipeline(
        stage_fn, loss_fn, mesh=pipeline_mesh(2), schedule=schedule, activations=activations
    )
    args = (problem["blocks"], problem["head"], problem["inputs"], problem["targets"])
    text = jax.jit(pipe).lower(*args).compile().as_text()
    bodies: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            name = header.group(1)
            bodies[name] = []
        elif line.strip() == "}":
            name = None
        elif name is not None:
            bodies[name].append(line)

    def count(comp: str, seen: set[str]) -> int:
        if comp in seen:
            return 0
        seen.add(comp)
        lines = bodies[comp]
        called = {r for line in lines for r in re.findall(r"%([\w.\-]+)", line) if r in bodies}
        return sum(len(re.findall(r"\btanh\(", line)) for line in lines) + sum(
            count(c, seen) for c in called
        )

    switches = [
        [n.strip().lstrip("%") for n in m.group(1).split(",")]
        for lines in bodies.values()
        for line in lines
        if (m := re.search(r"branch_computations=\{([^}]*)\}", line))
    ]
    (switch,) = [s for s in switches if len(s) >= 3]
    return [count(branch, set()) for branch in switch]


def test_stash_backward_does_not_recompute_the_forward() -> None:
    # Recompute: the backward branch runs the stage forward again (one tanh per layer).
    assert _tanh_per_branch("recompute") == [0, 1, 1]
    # Stash: the stashed backward has none; only the forward and the last stage's combined
    # forward-and-backward compute tanh.
    assert _tanh_per_branch("stash") == [0, 1, 0, 1]


# ----- errors ---------------------------------------------------------------------------------
def _call(
    *,
    schedule: Schedule | None = None,
    mesh: jax.sharding.Mesh | None = None,
    axis: str = "pipeline",
    stage: Callable[..., Any] = stage_fn,
    loss: Callable[..., Any] = loss_fn,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    schedule = schedule or build_schedule("gpipe", stages=2, microbatches=2)
    problem = make_problem(2, 2)
    if edit is not None:
        edit(problem)
    pipe = make_pipeline(stage, loss, mesh=mesh or pipeline_mesh(2), schedule=schedule, axis=axis)
    jax.eval_shape(pipe, problem["blocks"], problem["head"], problem["inputs"], problem["targets"])


def test_error_axis_not_in_mesh() -> None:
    with pytest.raises(PipelineError, match=r"axis 'stages' is not an axis of the mesh"):
        _call(axis="stages")


def test_error_axis_size_differs_from_stages() -> None:
    with pytest.raises(
        PipelineError, match=r"axis 'pipeline' has size 4 .* but the schedule has stages=2"
    ):
        _call(mesh=pipeline_mesh(4))


def test_error_schedule_type() -> None:
    with pytest.raises(PipelineError, match=r"schedule must be a titanax\.pipeline\.Schedule"):
        make_pipeline(stage_fn, loss_fn, mesh=pipeline_mesh(2), schedule="1f1b")  # type: ignore[arg-type]


def test_error_inputs_without_microbatch_dim() -> None:
    def edit(pr: dict[str, Any]) -> None:
        pr["inputs"] = pr["inputs"].reshape(4, D)

    with pytest.raises(
        PipelineError, match=r"inputs must be one array \[microbatches=2, microbatch, \.\.\.\]"
    ):
        _call(edit=edit)


def test_error_targets_without_microbatch_dim() -> None:
    def edit(pr: dict[str, Any]) -> None:
        pr["targets"] = pr["targets"].reshape(4, OUT)

    with pytest.raises(PipelineError, match=r"targets leaf <root> has shape \(4, 3\)"):
        _call(edit=edit)


def test_error_layer_dims_disagree() -> None:
    def edit(pr: dict[str, Any]) -> None:
        pr["blocks"]["b"] = pr["blocks"]["b"][:1]

    with pytest.raises(PipelineError, match=r"disagree on the leading \(layer\) dim"):
        _call(edit=edit)


def test_error_layers_not_divisible() -> None:
    with pytest.raises(
        PipelineError, match=r"stacked layer dim is 2, not a positive multiple of .* = 2 × 2 = 4"
    ):
        _call(schedule=build_schedule("interleaved", stages=2, microbatches=2, virtual_stages=2))


def test_error_stage_changes_shape() -> None:
    with pytest.raises(PipelineError, match=r"stage_fn maps an activation float32\[2, 8\] to"):
        _call(stage=lambda prm, x: x[:, :4])


def test_error_loss_not_two_scalars() -> None:
    with pytest.raises(PipelineError, match=r"loss_fn\(head_params, outputs, targets\) must"):
        _call(loss=lambda head, y, t: jnp.sum(y))


def test_error_activations_value() -> None:
    with pytest.raises(
        PipelineError, match=r"activations must be 'recompute' .* or 'stash' .*, got 'keep'"
    ):
        make_pipeline(
            stage_fn,
            loss_fn,
            mesh=pipeline_mesh(2),
            schedule=build_schedule("1f1b", stages=2, microbatches=2),
            activations="keep",  # type: ignore[arg-type]
        )
