"""End to end: the ``titanax`` command trains dp, tp and pp runs, writes the run directory, resumes.

Every command runs in a subprocess (``--cpu-devices`` / ``run.cpu_devices`` must be applied
before JAX starts). The three modes train the same tiny GPT on the same synthetic tokens — data
parallel in the per-device view on data=4, data=2 × tensor=2 in the global view, and data=2 ×
pipeline=2 with a 1F1B schedule — so besides their run directories the test checks that they log
the same losses. The three runs of a phase run concurrently, and all of them share one JAX
persistent compilation cache, so the resumed runs do not compile again.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest

from titanax.cli import load_config

MODES = {
    "dp": ("mesh: {axes: [data], shape: [4]}", "plan: {dp: {axis: data}}"),
    "tp": (
        "mesh: {axes: [data, tensor], shape: [2, 2]}",
        "plan: {dp: {axis: data}, tp: {axis: tensor, rules: gpt}}",
    ),
    "pp": (
        "mesh: {axes: [data, pipeline], shape: [2, 2]}",
        "plan: {dp: {axis: data}, pp: {axis: pipeline, stages: 2, microbatches: 2}}",
    ),
}

CONFIG = """
run: {{name: e2e_{mode}, dir: {root}/runs/{mode}, steps: 2, cpu_devices: 4, eval_batches: 1}}
{mesh}
{plan}
model: {{kind: gpt, vocab_size: 32, seq_len: 8, d_model: 16, n_heads: 2, n_layers: 2}}
data: {{source: synthetic, batch_size: 8, num_samples: 64, valid_percent: 25.0}}
optimizer: {{name: adam, learning_rate: 1.0e-2}}
checkpoint: {{every: 1, keep: 5}}
logging: {{log_every: 1, progress: false}}
"""

TIMEOUT = 240


def _env(cache: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "COLUMNS": "120",
        }
    )
    env.pop("JAX_NUM_CPU_DEVICES", None)  # the configs ask for 4
    return env


def _titanax(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "titanax.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _all(procs: dict[str, subprocess.Popen[str]]) -> dict[str, tuple[int, str, str]]:
    out = {}
    for mode, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for other in procs.values():
                other.kill()
            raise
        out[mode] = (proc.returncode, stdout, stderr)
    return out


def _csv(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cli_e2e")
    env = _env(root / "jax_cache")
    configs = {}
    for mode, (mesh, plan) in MODES.items():
        configs[mode] = root / f"{mode}.yaml"
        text = CONFIG.format(mode=mode, root=root, mesh=mesh, plan=plan)
        configs[mode].write_text(textwrap.dedent(text))
    first = _all({m: _titanax("run", m, "--config", str(c), env=env) for m, c in configs.items()})
    resumed = _all(
        {
            m: _titanax("run", m, "--config", str(c), "--set", "run.steps=3", env=env)
            for m, c in configs.items()
        }
    )
    return {"root": root, "configs": configs, "first": first, "resumed": resumed}


def test_each_mode_writes_its_run_directory(runs: dict[str, Any]) -> None:
    for mode, (code, stdout, stderr) in runs["first"].items():
        assert code == 0, f"{mode}:\n{stdout}\n{stderr}"
        assert f"titanax run {mode}" in stdout
        assert "no checkpoint in" in stdout
        run_dir = runs["root"] / "runs" / mode
        # rewritten by the resumed run, which sets run.steps=3
        resolved = load_config(runs["configs"][mode], overrides=["run.steps=3"])
        assert load_config(run_dir / "config.yaml") == resolved
        assert [r["step"] for r in _csv(run_dir / "metrics.csv")[:2]] == ["1", "2"]
        assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
        for step in (1, 2):
            assert (run_dir / "checkpoints" / str(step) / "commit_success.txt").is_file()
        assert "validation loss" in stdout  # summary.json now holds the resumed invocation
        assert [r["step"] for r in _csv(run_dir / "eval.csv")][:1] == ["2"]


def test_checkpoints_carry_the_resolved_config(runs: dict[str, Any]) -> None:
    from titanax.io import inspect_checkpoint

    for mode in MODES:
        info = inspect_checkpoint(runs["root"] / "runs" / mode / "checkpoints", step=2)
        assert info.metadata["config"] == load_config(runs["configs"][mode]).to_dict()
        assert info.metadata["data_position"] == 16  # 2 steps × 8 samples


def test_the_three_modes_log_the_same_losses(runs: dict[str, Any]) -> None:
    losses = {
        mode: [float(r["loss"]) for r in _csv(runs["root"] / "runs" / mode / "metrics.csv")]
        for mode in MODES
    }
    assert len(losses["dp"]) == 3
    # Same model, data order and optimizer; the layouts only change float summation order.
    np.testing.assert_allclose(losses["tp"], losses["dp"], rtol=2e-5)
    np.testing.assert_allclose(losses["pp"], losses["dp"], rtol=2e-5)


def test_running_again_resumes_from_the_newest_checkpoint(runs: dict[str, Any]) -> None:
    for mode, (code, stdout, stderr) in runs["resumed"].items():
        assert code == 0, f"{mode}:\n{stdout}\n{stderr}"
        assert "Resuming from checkpoint step 2" in stdout
        assert "(data position 16)" in stdout
        run_dir = runs["root"] / "runs" / mode
        assert [r["step"] for r in _csv(run_dir / "metrics.csv")] == ["1", "2", "3"]
        assert (run_dir / "checkpoints" / "3" / "commit_success.txt").is_file()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (summary["start_step"], summary["final_step"], summary["resumed_from"]) == (2, 3, 2)
        evals = _csv(run_dir / "eval.csv")
        assert [r["step"] for r in evals] == ["2", "3"]


def test_config_errors_reach_the_user_as_one_line_each(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent(
            """
            run: {name: bad, stpes: 3, cpu_devices: 8, seed: one}
            mesh: {axes: [data, tensor], shape: [4, 3]}
            plan:
              dp: {axis: data}
              tp: {axis: tensor, rules: {head/kernel: [null, tensr]}}
            data: {batch_size: "${TITANAX_E2E_UNSET}"}
            """
        )
    )
    env = _env(tmp_path / "cache")
    env.pop("TITANAX_E2E_UNSET", None)
    result = subprocess.run(
        [sys.executable, "-m", "titanax.cli", "validate", "--config", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    assert lines == [
        f"{bad}:2: run.stpes: unknown key 'stpes'; did you mean 'steps'? (valid keys of run: "
        "name, dir, mode, steps, seed, cpu_devices, eval_every, eval_batches, "
        "compilation_cache).",
        f"{bad}:2: run.seed: expected an int, got str 'one'.",
        f"{bad}:3: mesh.shape: [4, 3] multiplies to 12, but the mesh must use all 8 cpu "
        "device(s) (run.cpu_devices: 8). Make the product 8, or put -1 in one axis.",
        f"{bad}:6: plan.tp.rules['head/kernel']: rule 'head/kernel' -> [null, tensr] names mesh "
        "axis 'tensr', which is not in mesh.axes ['data', 'tensor']; did you mean 'tensor'?",
        f"{bad}:7: data.batch_size: environment variable 'TITANAX_E2E_UNSET' is not set and "
        "${TITANAX_E2E_UNSET} has no default; export TITANAX_E2E_UNSET=... or write "
        "${TITANAX_E2E_UNSET:default}.",
    ]
