"""Engine: sharded state, one compile, recompile reasons, dry runs, fit, NaN policy, resume."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from titanax.exec import (
    Engine,
    ExecError,
    NonFiniteError,
    RecompileError,
    StateError,
    TrainState,
    step_fn,
)
from titanax.mesh import MeshSpec, collectives
from titanax.sharding import DP, FSDP, TP, Plan, Rules
from titanax.testing import assert_trees_allclose, assert_trees_equal

D_IN, D_HID, BATCH = 16, 32, 16


def init_mlp(key: jax.Array) -> dict[str, Any]:
    k1, k2 = jax.random.split(key)
    return {
        "layers": [
            {"kernel": jax.random.normal(k1, (D_IN, D_HID)) * 0.3, "bias": jnp.zeros(D_HID)},
            {"kernel": jax.random.normal(k2, (D_HID, D_IN)) * 0.3, "bias": jnp.zeros(D_IN)},
        ]
    }


def mlp_loss(params: dict[str, Any], batch: Mapping[str, jax.Array]) -> jax.Array:
    h = jnp.tanh(batch["x"] @ params["layers"][0]["kernel"] + params["layers"][0]["bias"])
    out = h @ params["layers"][1]["kernel"] + params["layers"][1]["bias"]
    return jnp.mean((out - batch["y"]) ** 2)


@step_fn
def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> Any:
    loss, grads = state.value_and_grad(mlp_loss)(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


@step_fn(view="per_device")
def train_step_per_device(state: TrainState, batch: Mapping[str, jax.Array]) -> Any:
    loss, grads = state.value_and_grad(mlp_loss)(state.params, batch)
    grads = collectives.pmean(grads, "data")  # the explicit data-parallel reduction
    return state.apply_gradients(grads=grads), {"loss": collectives.pmean(loss, "data")}


@step_fn(kind="eval")
def eval_step(state: TrainState, batch: Mapping[str, jax.Array]) -> Any:
    return {"loss": mlp_loss(state.params, batch)}


def batches(n: int, *, seed: int = 0, size: int = BATCH) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "x": rng.standard_normal((size, D_IN)).astype(np.float32),
            "y": rng.standard_normal((size, D_IN)).astype(np.float32),
        }
        for _ in range(n)
    ]


TP_RULES = Rules(
    {
        "layers/0/kernel": P(None, "tensor"),
        "layers/0/bias": P("tensor"),
        "layers/1/kernel": P("tensor", None),
    }
)


def run_steps(
    engine: Engine, step: Any, data: list[dict[str, np.ndarray]]
) -> tuple[TrainState, list[float]]:
    state = engine.create_state(init_mlp, jax.random.key(0))
    losses = []
    for b in data:
        state, metrics = engine.step(step, state, b)
        losses.append(float(metrics["loss"]))  # blocks each step (CPU deadlock note)
    return state, losses


@pytest.fixture(scope="module")
def reference() -> tuple[TrainState, list[float]]:
    engine = Engine(
        MeshSpec(axes=("data",), shape=(1,), devices=1),
        Plan(data_parallel=DP("data")),
        optimizer=optax.adam(1e-2),
    )
    return run_steps(engine, train_step, batches(5))


@pytest.mark.parametrize(
    ("axes", "shape", "plan", "types"),
    [
        (("data",), (8,), Plan(data_parallel=DP("data")), "auto"),
        (("fsdp",), (8,), Plan(fsdp=FSDP("fsdp", min_size_bytes=0)), "auto"),
        (("fsdp",), (8,), Plan(fsdp=FSDP("fsdp", min_size_bytes=0)), "explicit"),
        (
            ("data", "tensor"),
            (4, 2),
            Plan(data_parallel=DP("data"), tensor_parallel=TP("tensor", rules=TP_RULES)),
            "auto",
        ),
    ],
    ids=["dp8", "fsdp8", "fsdp8-explicit", "dp4xtp2"],
)
def test_layouts_match_one_device_and_compile_once(
    axes: tuple[str, ...], shape: tuple[int, ...], plan: Plan, types: Any, reference: Any
) -> None:
    mesh = MeshSpec(axes=axes, shape=shape, axis_types=types)
    engine = Engine(mesh, plan, optimizer=optax.adam(1e-2))
    state, losses = run_steps(engine, train_step, batches(5))
    ref_state, ref_losses = reference
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert_trees_allclose(state.params, ref_state.params, rtol=1e-5, atol=1e-6)
    planned = engine.state_shardings(state)
    actual = jax.tree.map(lambda x: x.sharding, state)
    assert jax.tree.leaves(actual) == jax.tree.leaves(planned)
    assert engine.recompiles(train_step) == 0


def test_dp_replicas_are_bit_identical() -> None:
    engine = Engine(
        MeshSpec(axes=("data",), shape=(8,)),
        Plan(data_parallel=DP("data")),
        optimizer=optax.adam(1e-2),
    )
    state, _ = run_steps(engine, train_step, batches(3))
    for leaf in jax.tree.leaves(state.params):
        shards = [np.asarray(s.data) for s in leaf.addressable_shards]
        for shard in shards[1:]:
            np.testing.assert_array_equal(shard, shards[0])


def test_per_device_view_with_explicit_pmean_matches(reference: Any) -> None:
    engine = Engine(
        MeshSpec(axes=("data",), shape=(8,)),
        Plan(data_parallel=DP("data")),
        optimizer=optax.adam(1e-2),
    )
    state, losses = run_steps(engine, train_step_per_device, batches(5))
    np.testing.assert_allclose(losses, reference[1], rtol=1e-5)
    assert_trees_allclose(state.params, reference[0].params, rtol=1e-5, atol=1e-6)


def test_strict_mode_names_the_recompile_reason() -> None:
    engine = Engine(
        MeshSpec(axes=("data",), shape=(8,)),
        Plan(data_parallel=DP("data")),
        optimizer=optax.sgd(0.1),
        strict=True,
    )
    state = engine.create_state(init_mlp, jax.random.key(0))
    state, m = engine.step(train_step, state, batches(1)[0])
    jax.block_until_ready(m)
    with pytest.raises(RecompileError, match=r"batch\['x'\]: shape \(16, 16\) -> \(8, 16\)"):
        engine.step(train_step, state, batches(1, size=8)[0])


def test_recompile_is_logged_when_not_strict(caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine(
        MeshSpec(axes=("data",), shape=(8,)),
        Plan(data_parallel=DP("data")),
        optimizer=optax.sgd(0.1),
    )
    state = engine.create_state(init_mlp, jax.random.key(0))
    state, m = engine.step(train_step, state, batches(1)[0])
    jax.block_until_ready(m)
    with caplog.at_level(logging.WARNING, logger="titanax.exec"):
        state, m = engine.step(train_step, state, batches(1, size=8)[0])
        jax.block_until_ready(m)
    assert "compiled again (compile #2)" in caplog.text
    assert engine.recompiles(train_step) == 1


def test_dry_run_dp8_reports_one_all_reduce_of_the_gradient_bytes() -> None:
    engine = Engine(
        MeshSpec(axes=("data",), shape=(8,)),
        Plan(data_parallel=DP("data")),
        optimizer=optax.sgd(0.1),
    )
    abstract = engine.abstract_state(init_mlp, jax.random.key(0))
    batch_spec = {
        "x": jax.ShapeDtypeStruct((BATCH, D_IN), jnp.float32),
        "y": jax.ShapeDtypeStruct((BATCH, D_IN), jnp.float32),
    }
    report = engine.compile(train_step, batch_spec, state=abstract)
    grad_bytes = sum(x.size * 4 for x in jax.tree.leaves(abstract.params))
    reduces = [c for c in report.collectives if c.kind == "all-reduce" and c.bytes > 4]
    assert len(reduces) == 1, report.describe()
    assert reduces[0].axes == ("data",)
    # XLA combines the loss's scalar all-reduce into the gradients' one: at most 4 bytes more.
    assert reduces[0].bytes - grad_bytes in (0, 4)
    assert report.temp_bytes is not None
    assert report.flops is not None
    assert report.flops > 0
    assert "all-reduce" in report.describe()


class ListSink:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.closed = False

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        assert all(isinstance(v, float) for v in metrics.values()), metrics
        self.rows.append((step, dict(metrics)))

    def close(self) -> None:
        self.closed = True


class MemoryStore:
    """A CheckpointStore keeping host copies (enough to test the Engine's side)."""

    def __init__(self) -> None:
        self.saved: dict[int, tuple[Any, dict[str, Any]]] = {}

    def save(self, step: int, state: Any, *, metadata: Mapping[str, Any]) -> None:
        self.saved[step] = (jax.device_get(state), dict(metadata))

    def restore(self, step: int | None, target: Any) -> tuple[Any, dict[str, Any]]:
        step = max(self.saved) if step is None else step
        host, meta = self.saved[step]
        placed = jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), host, target)
        return placed, meta

    def latest_step(self) -> int | None:
        return max(self.saved) if self.saved else None

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        return self.saved[max(self.saved) if step is None else step][1]

    def wait(self) -> None:
        pass

    def close(self) -> None:
        pass


class Loader:
    """ResumableData over a list of batches."""

    def __init__(self, data: list[dict[str, np.ndarray]]) -> None:
        self.data = data
        self._index = 0

    @property
    def position(self) -> int:
        return self._index * BATCH

    def seek(self, position: int) -> None:
        self._index = position // BATCH

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while self._index < len(self.data):
            self._index += 1
            yield self.data[self._index - 1]


def test_fit_logs_evaluates_checkpoints_and_resumes() -> None:
    data = batches(8)
    sink, store = ListSink(), MemoryStore()
    plan = Plan(data_parallel=DP("data"))
    engine = Engine(
        MeshSpec(axes=("data",), shape=(8,)),
        plan,
        optimizer=optax.adam(1e-2),
        checkpoint=store,
        sinks=[sink],
        metadata={"config": {"name": "t"}},
    )
    engine.create_state(init_mlp, jax.random.key(0))
    with jax.transfer_guard_device_to_host("disallow"):  # no implicit host syncs in the loop
        engine.fit(
            train_step,
            Loader(data[:4]),
            steps=4,
            log_every=2,
            eval_step=eval_step,
            eval_data=lambda: data[6:8],
            eval_every=4,
            checkpoint_every=2,
            progress=False,
        )
    steps_logged = [s for s, m in sink.rows if "loss" in m]
    assert steps_logged == [2, 4]
    first = sink.rows[0][1]
    assert {"loss", "samples_per_s", "step_time_s", "compile_time_s"} <= set(first)
    assert any("eval_loss" in m for _, m in sink.rows)
    assert sorted(store.saved) == [2, 4]
    meta = store.saved[4][1]
    assert meta["data_position"] == 4 * BATCH
    assert meta["config"] == {"name": "t"}
    assert meta["plan_fingerprint"] == plan.fingerprint()

    # 8 straight steps vs 4 + resume + 4 on the same mesh: bit-equal params (CPU).
    straight = Engine(MeshSpec(axes=("data",), shape=(8,)), plan, optimizer=optax.adam(1e-2))
    straight.create_state(init_mlp, jax.random.key(0))
    expected = straight.fit(train_step, Loader(data), steps=8, log_every=4, progress=False)
    for mesh, exact in (
        (MeshSpec(axes=("data",), shape=(8,)), True),
        (MeshSpec(axes=("data", "tensor"), shape=(4, 2)), False),
    ):
        resumed = Engine(mesh, plan, optimizer=optax.adam(1e-2), checkpoint=store)
        loader = Loader(data)
        state = resumed.restore_or_create(init_mlp, jax.random.key(1), data=loader, step=4)
        assert int(state.step) == 4
        assert loader.position == 4 * BATCH
        final = resumed.fit(train_step, loader, steps=8, log_every=4, progress=False)
        if exact:
            assert_trees_equal(jax.device_get(final.params), jax.device_get(expected.params))
        else:  # another mesh: another reduction order, same values to float precision
            assert_trees_allclose(final.params, expected.params, rtol=1e-5, atol=1e-6)


def test_restore_refuses_another_optimizer() -> None:
    store = MemoryStore()
    engine = Engine(
        MeshSpec(axes=("data",), shape=(8,)),
        Plan(data_parallel=DP("data")),
        optimizer=optax.adam(1e-2),
        checkpoint=store,
    )
    engine.create_state(init_mlp, jax.random.key(0))
    engine.save()
    other = Engine(
        MeshSpec(axes=("data",), shape=(8,)),
        Plan(data_parallel=DP("data")),
        optimizer=optax.sgd(0.1),
        checkpoint=store,
    )
    with pytest.raises(ExecError, match=r"written with another optimizer"):
        other.restore_or_create(init_mlp, jax.random.key(0))


def nan_batches() -> list[dict[str, np.ndarray]]:
    data = batches(4)
    data[1] = {"x": np.full_like(data[1]["x"], np.nan), "y": data[1]["y"]}
    return data


def test_nan_policy_raise_names_the_window() -> None:
    engine = Engine(
        MeshSpec(axes=("data",), shape=(8,)),
        Plan(data_parallel=DP("data")),
        optimizer=optax.sgd(0.1),
    )
    engine.create_state(init_mlp, jax.random.key(0))
    with pytest.raises(NonFiniteError, match=r"non-finite metric\(s\) \['loss'\] in steps 1..2"):
        engine.fit(train_step, nan_batches(), steps=4, log_every=2, progress=False)


def test_nan_policy_skip_leaves_params_finite() -> None:
    engine = Engine(
        MeshSpec(axes=("data",), shape=(8,)),
        Plan(data_parallel=DP("data")),
        optimizer=optax.sgd(0.1),
        nan_policy="skip",
    )
    engine.create_state(init_mlp, jax.random.key(0))
    state = engine.fit(train_step, nan_batches(), steps=4, log_every=2, progress=False)
    assert int(state.skipped) == 1
    assert int(state.step) == 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_engine_argument_errors() -> None:
    mesh = MeshSpec(axes=("data",), shape=(8,))
    with pytest.raises(ExecError, match=r"nan_policy='ignore' must be"):
        Engine(mesh, Plan(data_parallel=DP("data")), optimizer=optax.sgd(0.1), nan_policy="ignore")  # type: ignore[arg-type]
    engine = Engine(mesh, Plan(data_parallel=DP("data")), optimizer=optax.sgd(0.1))
    with pytest.raises(ExecError, match=r"no state yet"):
        engine.fit(train_step, batches(1), steps=1)
    engine.create_state(init_mlp, jax.random.key(0))
    with pytest.raises(ExecError, match=r"log_every=0 must be a positive int"):
        engine.fit(train_step, batches(1), steps=1, log_every=0)
    with pytest.raises(ExecError, match=r"is not a step; decorate it with"):
        engine.step(lambda s, b: (s, {}), engine.state, batches(1)[0])  # type: ignore[arg-type]
    with pytest.raises(ExecError, match=r"no checkpoint store"):
        engine.save()


def test_bad_inputs_get_exec_errors() -> None:
    mesh = MeshSpec(axes=("data",), shape=(8,))
    with pytest.raises(ExecError, match=r"plan=None is not a titanax.sharding.Plan"):
        Engine(mesh, None, optimizer=optax.sgd(0.1))  # type: ignore[arg-type]
    engine = Engine(mesh, Plan(data_parallel=DP("data")), optimizer=optax.sgd(0.1))
    with pytest.raises(ExecError, match=r"rng=0 is not a PRNG key"):
        engine.create_state(init_mlp, 0)  # type: ignore[arg-type]
    with pytest.raises(ExecError, match=r"init_fn\(rng\) failed while its shapes were traced"):
        engine.create_state(dict, jax.random.key(0))  # type: ignore[arg-type, misc]
    state = engine.create_state(init_mlp, jax.random.key(0))
    with pytest.raises(ExecError, match=r"Engine.fit: <function .*> is not a step"):
        engine.fit(lambda s, b: (s, {}), batches(1), steps=1)  # type: ignore[arg-type]
    with pytest.raises(ExecError, match=r"data must be an iterable of batches .* got int"):
        engine.fit(train_step, 3, steps=1)  # type: ignore[arg-type]
    with pytest.raises(ExecError, match=r"'train_step' is a train step where a eval step"):
        engine.evaluate(train_step, batches(1))

    @step_fn
    def text_metric(state: TrainState, batch: Any) -> Any:
        return state, {"note": "hi"}

    with pytest.raises(ExecError, match=r"metric 'note' is str 'hi'; metrics must be numeric"):
        engine.step(text_metric, state, batches(1)[0])

    @step_fn
    def wrong_grads(state: TrainState, batch: Any) -> Any:
        grads = jax.tree.map(lambda p: jnp.zeros((3,)), state.params)
        return state.apply_gradients(grads=grads), {}

    with pytest.raises(StateError, match=r"gradient shapes differ .* grad \(3,\) vs param"):
        engine.step(wrong_grads, state, batches(1)[0])
    _, metrics = engine.step(train_step, state, batches(1)[0])
    jax.block_until_ready(metrics)
    with pytest.raises(ExecError, match=r"buffers were donated to an earlier step"):
        engine.step(train_step, state, batches(1)[0])


def test_optimizer_fingerprint_ignores_the_model() -> None:
    from titanax.exec import optimizer_fingerprint

    small = TrainState.create(params={"w": jnp.zeros((2, 2))}, tx=optax.adam(1e-3))
    large = TrainState.create(params={"a": jnp.zeros((5,)), "b": jnp.zeros(3)}, tx=optax.adam(0.1))
    other = TrainState.create(params={"w": jnp.zeros((2, 2))}, tx=optax.sgd(1e-3))
    assert optimizer_fingerprint(small) == optimizer_fingerprint(large)
    assert optimizer_fingerprint(small) != optimizer_fingerprint(other)


SIGNAL_SCRIPT = """
import os, signal
import jax, jax.numpy as jnp, numpy as np, optax
from titanax.exec import Engine, TrainState, TrainingInterrupted, step_fn
from titanax.mesh import MeshSpec
from titanax.sharding import DP, Plan

class Store:
    saved = {}
    def save(self, step, state, *, metadata): self.saved[step] = metadata
    def restore(self, step, target): raise AssertionError
    def latest_step(self): return max(self.saved) if self.saved else None
    def metadata(self, step=None): return {}
    def wait(self): pass
    def close(self): pass

class SendSignal:
    def on_log(self, step, metrics):
        if step == 2:
            for _ in range(REPEATS):  # a repeat at once is the same request (timeout + uv run)
                os.kill(os.getpid(), signal.SIGNUM)

@step_fn
def train_step(state, batch):
    loss, grads = state.value_and_grad(lambda p, b: jnp.mean((b["x"] @ p["w"]) ** 2))(
        state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}

store = Store()
engine = Engine(MeshSpec(axes=("data",), shape=(-1,)), Plan(data_parallel=DP("data")),
                optimizer=optax.sgd(0.1), checkpoint=store, hooks=[SendSignal()])
engine.create_state(lambda k: {"w": jax.random.normal(k, (4, 4))}, jax.random.key(0))
data = [{"x": np.ones((8, 4), np.float32)}] * 10
try:
    engine.fit(train_step, data, steps=10, log_every=2, progress=False)
except TrainingInterrupted as err:
    print("STOPPED", err.signal_name, err.step, sorted(store.saved))
"""


@pytest.mark.parametrize(("name", "repeats"), [("SIGTERM", 1), ("SIGINT", 2)])
def test_a_signal_saves_and_stops(name: str, repeats: int) -> None:
    from titanax.testing import run_with_devices

    script = SIGNAL_SCRIPT.replace("REPEATS", str(repeats)).replace("SIGNUM", name)
    out = run_with_devices(script, num_devices=2, timeout=180)
    assert f"STOPPED {name} 2 [2]" in out.stdout, out.stdout + out.stderr


def test_a_second_signal_after_the_grace_period_interrupts_at_once() -> None:
    import signal

    from titanax.exec._signals import StopRequest

    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.signal_name == "SIGINT"
        signal.raise_signal(signal.SIGINT)  # within the grace period: the same request
        assert stop.requested(at_log_point=False)
        assert stop._first_at is not None
        stop._first_at -= StopRequest.GRACE_SECONDS + 1.0
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # a real second Ctrl-C
        assert signal.getsignal(signal.SIGINT) is before
    assert signal.getsignal(signal.SIGINT) is before
