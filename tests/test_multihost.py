"""Multi-process runs on loopback: 2 processes × 4 CPU devices against 1 process × 8 devices.

Every run is a set of subprocesses under a timeout, each on a fresh coordinator port (a peer that
never arrives aborts the others after the start-up timeout, so nothing here can hang the suite).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from titanax.testing import free_port

WORKER = pathlib.Path(__file__).parent / "multihost" / "worker.py"
TIMEOUT = 240


def _env(devices: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
    for key in [k for k in env if k.startswith("TITANAX_") and k != "TITANAX_TEST_XLA_OPT_LEVEL"]:
        del env[key]
    env.update(extra or {})
    return env


def run_single(run_dir: pathlib.Path, *args: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, str(WORKER), str(run_dir), *args],
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_pair(run_dir: pathlib.Path, *args: str) -> dict[str, object]:
    port = free_port()
    procs = []
    for index in range(2):
        env = _env(
            4,
            {
                "TITANAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "TITANAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}",
                "TITANAX_NUM_PROCESSES": "2",
                "TITANAX_PROCESS_ID": str(index),
                "TITANAX_INIT_TIMEOUT": "60",
            },
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(run_dir), *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for index, (code, out, err) in enumerate(outputs):
        assert code == 0, f"process {index} exited {code}\n{out[-3000:]}\n{err[-3000:]}"
    return json.loads(outputs[0][1].strip().splitlines()[-1])


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return run_single(tmp_path_factory.mktemp("single"), "--steps", "5")


def test_two_processes_match_one_process(
    single_run: dict[str, object], tmp_path: pathlib.Path
) -> None:
    pair = run_pair(tmp_path, "--steps", "5")
    assert pair["processes"] == 2
    assert single_run["processes"] == 1
    np.testing.assert_allclose(pair["losses"], single_run["losses"], rtol=1e-5)
    # host-side I/O happens on process 0 only
    assert (tmp_path / "p0" / "metrics.csv").read_text().count("\n") == 6  # header + 5 rows
    assert not (tmp_path / "p1" / "metrics.csv").exists()


def test_checkpoint_across_process_counts(
    single_run: dict[str, object], tmp_path: pathlib.Path
) -> None:
    # 2 processes save at step 3; 1 process with 8 devices restores and continues to step 5.
    two = tmp_path / "from_two"
    run_pair(two, "--steps", "3", "--save")
    resumed = run_single(two, "--steps", "2", "--restore")
    # 1 process saves at step 3; 2 processes restore and continue to step 5.
    one = tmp_path / "from_one"
    run_single(one, "--steps", "3", "--save")
    resumed_pair = run_pair(one, "--steps", "2", "--restore")
    straight = single_run  # the same 5 steps without interruption
    assert resumed["step"] == resumed_pair["step"] == 5
    np.testing.assert_allclose(resumed["losses"], straight["losses"][3:], rtol=1e-5)
    np.testing.assert_allclose(resumed_pair["losses"], straight["losses"][3:], rtol=1e-5)
    np.testing.assert_allclose(resumed["checksum"], straight["checksum"], rtol=1e-5)


STOP_SCRIPT = """
import os, signal
import titanax.mesh as tm
tm.initialize_distributed(platform="cpu")
import jax, jax.numpy as jnp, numpy as np, optax
from titanax.exec import Engine, TrainingInterrupted, step_fn
from titanax.sharding import DP, Plan

class Store:
    saved = []
    def save(self, step, state, *, metadata): self.saved.append(step)
    def restore(self, step, target): raise AssertionError
    def latest_step(self): return None
    def metadata(self, step=None): return {}
    def wait(self): pass
    def close(self): pass

def data():
    for i in range(20):
        if i == 3 and jax.process_index() == 1:  # only process 1 is signalled, mid-window
            os.kill(os.getpid(), signal.SIGINT)
        yield {"x": np.ones((4, 4), np.float32)}

@step_fn
def train_step(state, batch):
    loss, grads = state.value_and_grad(lambda p, b: jnp.mean((b["x"] @ p["w"]) ** 2))(
        state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}

store = Store()
engine = Engine(tm.MeshSpec(axes=("data",), shape=(-1,)), Plan(data_parallel=DP("data")),
                optimizer=optax.sgd(0.01), checkpoint=store)
engine.create_state(lambda k: {"w": jax.random.normal(k, (4, 4))}, jax.random.key(0))
try:
    engine.fit(train_step, data(), steps=20, log_every=2, progress=False)
except TrainingInterrupted as err:
    print("STOPPED", jax.process_index(), err.step, store.saved, flush=True)
"""


def test_a_signal_to_one_process_stops_all_at_the_same_step(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "stop.py"
    script.write_text(STOP_SCRIPT)
    code = (
        "import sys; from titanax.cli._launch import launch; "
        f"sys.exit(launch([sys.executable, {str(script)!r}], nproc=2, cpu_devices_per_proc=2))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(2),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    out = result.stdout
    # process 1 got SIGINT before step 4; both processes agree at the log point of step 4
    assert "[p0] STOPPED 0 4 [4]" in out, out + result.stderr
    assert "[p1] STOPPED 1 4 [4]" in out, out + result.stderr
