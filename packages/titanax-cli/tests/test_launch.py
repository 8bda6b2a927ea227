"""titanax launch: prefixed output, success, and a killed process stopping the run."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap
import time

import pytest

from titanax.cli._launch import LaunchError, launch

WORKER = textwrap.dedent(
    """
    import sys, time
    import titanax.mesh as tm
    info = tm.initialize_distributed(platform="cpu", expected_global_devices=4)
    import jax, jax.numpy as jnp
    from jax.sharding import PartitionSpec as P
    mesh = tm.MeshSpec(axes=("data",), shape=(-1,)).build()
    total = jax.jit(jax.shard_map(lambda x: tm.collectives.psum(x, "data"), mesh=mesh,
                                  in_specs=P("data"), out_specs=P()))
    x = jax.make_array_from_process_local_data(
        jax.sharding.NamedSharding(mesh, P("data")), jnp.ones((2,)) * (info.process_index + 1))
    print("sum", float(total(x)[0]), "on", info.process_count, "processes", flush=True)
    if len(sys.argv) > 1:
        print("waiting", flush=True)
        time.sleep(600)
    """
)


@pytest.fixture
def worker(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    return path


def test_two_processes_run_and_output_is_prefixed(
    worker: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    out = io.StringIO()
    code = launch([sys.executable, str(worker)], nproc=2, cpu_devices_per_proc=2, stdout=out)
    text = out.getvalue()
    assert code == 0, text
    # process 0 contributes 1+1, process 1 contributes 2+2: the global psum is 6 everywhere
    assert "[p0] sum 6.0 on 2 processes" in text
    assert "[p1] sum 6.0 on 2 processes" in text
    assert "[launch] all 2 processes finished" in text


def test_killed_process_stops_the_run(worker: pathlib.Path) -> None:
    code = (
        "import sys; from titanax.cli._launch import launch; "
        f"sys.exit(launch([sys.executable, {str(worker)!r}, 'hang'], nproc=2, "
        "cpu_devices_per_proc=2, grace_seconds=5))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    pids: dict[int, int] = {}
    waiting = set()
    lines = []
    deadline = time.monotonic() + 180
    try:
        while len(waiting) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.match(r"\[launch\] process (\d) pid (\d+)", line)
            if match:
                pids[int(match.group(1))] = int(match.group(2))
            match = re.match(r"\[p(\d)\] waiting", line)
            if match:
                waiting.add(int(match.group(1)))
        assert waiting == {0, 1}, "".join(lines)
        killed_at = time.monotonic()
        os.kill(pids[1], 9)
        rest, _ = proc.communicate(timeout=60)
        elapsed = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, "".join(lines) + rest
    assert elapsed < 60
    assert "failed: process 1 was killed by SIGKILL" in rest
    with pytest.raises(ProcessLookupError):  # no orphan: process 0 was stopped too
        os.kill(pids[0], 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"command": [], "nproc": 2}, r"no command given; put it after '--'"),
        ({"command": ["x"], "nproc": 0}, r"--nproc 0 must be at least 1"),
        ({"command": ["python3"], "nproc": 1, "port": 99999}, r"--port 99999 is not a TCP port"),
        ({"command": ["no_such_cmd_xyz"], "nproc": 1}, r"cannot start 'no_such_cmd_xyz'"),
        ({"command": ["x"], "nproc": 1, "cpu_devices_per_proc": 0}, r"must be at least 1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(LaunchError, match=match):
        launch(**kwargs)  # type: ignore[arg-type]
