"""Every example runs: its script and its YAML config for a few steps at a tiny size, and
``titanax verify`` passes on every config in ``examples/configs/``.

Everything runs in four subprocesses (the device count must be chosen before JAX starts; all
examples use 8 simulated devices), WORKERS at a time. A driver process runs its commands one
after the other — ``titanax`` commands through ``titanax.cli.main``, scripts as ``__main__``
(``runpy``) — which saves an interpreter start and the JAX import per command. All processes
share one JAX persistent compilation cache, so programs that recur (the tiny GPT's 1-device
reference in ``verify``) compile once. Sizes come from the scripts' flags and the CLI's
``--set`` (a one-layer GPT 32 wide on synthetic tokens), so the file stays around two minutes on
a 2-core machine; what the examples reach at full size (accuracy, loss curves) is measured in
their READMEs, not here.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import fcntl
import gzip
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CONFIGS = EXAMPLES / "configs"
WORKERS = int(os.environ.get("TITANAX_EXAMPLES_WORKERS", "2"))
pytestmark = pytest.mark.timeout(900)  # the module fixture runs every example (~2 min)
TIMEOUT = 600

# A GPT small enough to compile in seconds; synthetic tokens (no stdlib corpus to read).
GPT_TINY = [
    "model.d_model=32",
    "model.n_layers=1",
    "model.seq_len=32",
    "data.source=synthetic",
    "data.num_samples=64",
    "data.valid_percent=25.0",
    "data.batch_size=16",
]
RUN_TINY = [
    "run.steps=2",
    "run.eval_every=null",
    "run.eval_batches=1",
    "logging.log_every=1",
    "logging.progress=false",
    "logging.tensorboard=false",
    "checkpoint.enabled=false",
]
SCRIPT_TINY = ["--max-bytes", "300000", "--d-model", "32", "--seq-len", "32", "--batch-size", "16"]

# Runs each [name, argv] (JSON) in this one process between marker lines: argv ["titanax", ...]
# through titanax.cli.main, argv [script.py, ...] as __main__ (runpy, the script's directory
# first on sys.path, as `python script.py` would have it).
DRIVER = """
import json, os, runpy, sys, time, traceback
from titanax.cli import main
for arg in sys.argv[1:]:
    name, argv = json.loads(arg)
    print(f"<<< {name}", flush=True)
    start = time.perf_counter()
    if argv[0] == "titanax":
        code = main(argv[1:])
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(argv[0]))
        try:
            runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        except Exception:
            traceback.print_exc()
            code = 1
        finally:
            sys.path.pop(0)
    sys.stdout.flush(); sys.stderr.flush()
    print(f">>> {name} exit {code} after {time.perf_counter() - start:.1f} s", flush=True)
"""


@dataclasses.dataclass
class Result:
    """One command: its exit code, its output (stdout and stderr) and its wall time."""

    code: int
    out: str
    seconds: float

    def check(self) -> str:
        assert self.code == 0, f"exit code {self.code}:\n{self.out[-6000:]}"
        return self.out


def _set(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def _script(name: str, *args: str) -> list[str]:
    return [str(EXAMPLES / name / "train.py"), *args]


Commands = list[tuple[str, list[str]]]


def _cli_commands(tmp: pathlib.Path) -> tuple[Commands, Commands]:
    """``(verify every config, titanax run of every example config)``: (name, titanax argv)."""

    def run(mode: str, config: str, *overrides: str) -> list[str]:
        settings = [f"run.dir={tmp}/runs/{config}", *RUN_TINY, *overrides]
        return ["titanax", "run", mode, "-c", str(CONFIGS / f"{config}.yaml"), *_set(*settings)]

    verify = [
        (f"verify:{p.stem}", ["titanax", "verify", "-c", str(p), "--steps", "2"])
        for p in sorted(CONFIGS.glob("*.yaml"))
    ]
    reshard = [f"run.dir={tmp}/runs/reshard_cli", "checkpoint.enabled=true", *GPT_TINY]
    flax = ["model.kwargs.d_model=32", "model.kwargs.n_layers=1", "model.kwargs.seq_len=32"]
    runs = [
        ("reshard_yaml_tp2", run("tp", "reshard", *reshard)),
        ("reshard_yaml_tp4", run("tp", "reshard", *reshard, "run.steps=4", "mesh.shape=[2,4]")),
        ("pp_yaml", run("pp", "gpt_small_pp", *GPT_TINY, "model.n_layers=4")),
        ("mixed_yaml", run("tp", "mixed_precision", *GPT_TINY)),
        ("flax_yaml", run("tp", "flax_nnx", *flax, *GPT_TINY[3:])),
        ("tp_yaml", run("tp", "gpt_small_tp", *GPT_TINY)),
        ("mnist_yaml", run("dp", "mnist_dp", "run.steps=3", "data.batch_size=32")),
    ]
    return verify, runs


def _scripts(tmp: pathlib.Path) -> tuple[Commands, Commands]:
    two = ["--steps", "2", "--layers", "1", *SCRIPT_TINY]
    mixed = ["--steps", "4", "--log-every", "2", "--layers", "1", *SCRIPT_TINY]
    pp = ["--steps", "2", "--stages", "2", "--microbatches", "4", "--layers", "2", *SCRIPT_TINY]
    tp = [*two, "--eval-every", "2", "--eval-batches", "1", "--run-dir", f"{tmp}/runs/tp_script"]
    return (
        [
            ("reshard_script", _script("reshard", *two)),
            ("flax_script", _script("flax_nnx", *two)),
            ("mnist_script", _script("mnist_dp", "--steps", "25", "--compare")),
        ],
        [
            ("mixed_script", _script("mixed_precision", *mixed)),
            ("pp_script", _script("gpt_small_pp", *pp)),
            ("tp_script", _script("gpt_small_tp", *tp)),
        ],
    )


def _process(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=TIMEOUT,
        check=False,
    )
    return proc.returncode, proc.stdout


def _run_driver(commands: Commands, env: dict[str, str]) -> dict[str, Result]:
    start = time.perf_counter()
    args = [json.dumps([name, argv]) for name, argv in commands]
    code, out = _process([sys.executable, "-c", DRIVER, *args], env)
    seconds = time.perf_counter() - start
    results = {}
    for name, _ in commands:
        marker = re.escape(name)
        match = re.search(
            rf"<<< {marker}\n(.*?)>>> {marker} exit (\d+) after (\S+) s", out, flags=re.S
        )
        if match is None:  # the driver died before or during this command
            results[name] = Result(code=code or -1, out=out[-6000:], seconds=seconds)
        else:
            took = float(match.group(3))
            results[name] = Result(code=int(match.group(2)), out=match.group(1), seconds=took)
    return results


def _run_all(tmp: pathlib.Path) -> dict[str, Result]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", COLUMNS="160", PYTHONUNBUFFERED="1")
    env.update(
        JAX_NUM_CPU_DEVICES="8",
        TITANAX_RUNS=str(tmp / "runs"),
        JAX_COMPILATION_CACHE_DIR=str(tmp / "runs" / ".jax_cache"),  # gpt2_small_tp.yaml's too
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    jobs = [*_cli_commands(tmp), *_scripts(tmp)]
    out: dict[str, Result] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = [pool.submit(_run_driver, commands, env) for commands in jobs]
        for future in futures:
            out.update(future.result())
    times = ", ".join(f"{name} {r.seconds:.0f} s" for name, r in out.items())
    sys.stderr.write(f"examples: {times}\n")  # pytest -rA shows where the time went
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    """Every example's output, computed once per session even under pytest-xdist: the first
    worker runs them under a file lock and saves them; another worker waits and reads."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "examples"
    shared.mkdir(exist_ok=True)
    saved = shared / "results.json"
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if saved.is_file():
            return {k: Result(**v) for k, v in json.loads(saved.read_text()).items()}
        out = _run_all(shared)
        saved.write_text(json.dumps({k: dataclasses.asdict(v) for k, v in out.items()}))
        return out


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in:\n{text[-4000:]}"
    return float(match.group(1))


def _csv(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _run_dir(result: Result) -> pathlib.Path:
    match = re.search(r" -> (\S+)\n", result.out)
    assert match is not None, result.out[-4000:]
    return pathlib.Path(match.group(1))


# -- titanax verify ------------------------------------------------------------------------------


def test_verify_passes_on_every_example_config(results: dict[str, Result]) -> None:
    configs = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert {"flax_nnx", "gpt_small_pp", "mnist_dp", "mixed_precision", "reshard"} <= set(configs)
    for config in configs:
        out = results[f"verify:{config}"].check()
        assert "PASS: the layout matches one device." in out, config
        assert "FAIL" not in out, config
    pp = results["verify:gpt_small_pp"].out
    assert "mode pp, mesh data=2 × pipeline=4" in pp
    assert "(the unpipelined model)" in pp
    assert "verify data=8 (per_device view)" in results["verify:mnist_dp"].out
    mixed = results["verify:mixed_precision"].out
    assert "compute bfloat16" in mixed
    assert "tolerance loss 0.02, gradients 0.05" in mixed
    assert "model.kwargs.n_heads=2" in results["verify:flax_nnx"].out


# -- mnist_dp ------------------------------------------------------------------------------------


def test_mnist_dp_script_matches_one_device(results: dict[str, Result]) -> None:
    out = results["mnist_script"].check()
    assert "data: scikit-learn digits: train 1437, test 360, 8×8" in out
    pattern = r"largest relative loss difference, 8 vs 1 device\(s\), over 25 steps: (\S+)"
    diff = _number(pattern, out)
    assert diff < 1e-4  # the same batches; only the order of float sums differs
    accuracy = _number(r"test accuracy: (\S+)%", out)
    assert accuracy > 50.0  # after 25 steps; 300 steps reach ~98% (README)


def test_mnist_dp_script_reads_idx_files(tmp_path: pathlib.Path) -> None:
    spec = importlib.util.spec_from_file_location("mnist_dp_train", EXAMPLES / "mnist_dp/train.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 6, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 4, dtype=np.uint8),
    }
    for i, (name, array) in enumerate(arrays.items()):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
        data = header + array.tobytes()
        if i % 2:  # half of them gzipped
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (tmp_path / name).write_bytes(data)
    train, test = module.load_mnist(tmp_path)
    np.testing.assert_array_equal(train["y"], arrays["train-labels-idx1-ubyte"])
    np.testing.assert_allclose(train["x"] * 255.0, arrays["train-images-idx3-ubyte"], atol=1e-4)
    assert test["x"].shape == (4, 28, 28)
    assert test["x"].dtype == np.float32


def test_mnist_dp_yaml(results: dict[str, Result]) -> None:
    out = results["mnist_yaml"].check()
    assert "titanax run dp" in out
    assert "mesh data=8" in out
    assert "model: CNN, conv channels [16, 32]" in out
    assert re.search(r"accuracy \d+\.\d+%", out)
    rows = _csv(_run_dir(results["mnist_yaml"]) / "metrics.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3"]


# -- gpt_small_tp, gpt_small_pp, mixed precision ---------------------------------------------------


def test_gpt_small_tp_script(results: dict[str, Result]) -> None:
    out = results["tp_script"].check()
    assert "Layout on mesh (data=4, tensor=2)" in out
    assert "P(None, 'tensor')" in out
    assert np.isfinite(_number(r"validation loss (\S+) nats/byte at step 2", out))


def test_yaml_runs_of_the_gpt_configs(results: dict[str, Result]) -> None:
    for name, mode, mesh in (
        ("tp_yaml", "tp", "data=4 × tensor=2"),
        ("pp_yaml", "pp", "data=2 × pipeline=4"),
        ("mixed_yaml", "tp", "data=4 × tensor=2"),
        ("flax_yaml", "tp", "data=4 × tensor=2"),
    ):
        out = results[name].check()
        assert f"titanax run {mode}" in out, name
        assert f"mesh {mesh}" in out, name
        rows = _csv(_run_dir(results[name]) / "metrics.csv")
        assert [r["step"] for r in rows] == ["1", "2"], name
        assert all(np.isfinite(float(r["loss"])) for r in rows), name
        assert "validation loss" in out, name
    assert "stacked blocks" in results["pp_yaml"].out
    assert "model: Flax NNX TinyLM" in results["flax_yaml"].out


def test_gpt_small_pp_script(results: dict[str, Result]) -> None:
    out = results["pp_script"].check()
    assert "1f1b schedule: stages=2, microbatches=4" in out
    assert "bubble: " in out
    assert "P('pipeline'" in out  # the stacked blocks' layer dim over the pipeline axis
    assert np.isfinite(_number(r"validation loss (\S+) nats/byte after 2 steps", out))


def test_mixed_precision_script(results: dict[str, Result]) -> None:
    out = results["mixed_script"].check()
    assert "bfloat16 compute: parameters ['float32'], optimizer moments ['float32']" in out
    diff = _number(r"largest relative loss difference bf16 vs fp32 over 2 log points: (\S+)", out)
    assert diff < 5e-2  # bf16's 8-bit mantissa; fp32 master weights keep the curves together


# -- flax_nnx ------------------------------------------------------------------------------------


def test_flax_nnx_script(results: dict[str, Result]) -> None:
    out = results["flax_script"].check()
    for path, spec in (
        ("blocks/0/attn/query/kernel", "P(None, 'tensor', None)"),
        ("blocks/0/attn/out/kernel", "P('tensor', None, None)"),
        ("blocks/0/mlp/up/kernel", "P(None, 'tensor')"),
        ("lm_head/kernel", "P(None, 'tensor')"),
    ):
        row = next(line for line in out.splitlines() if f" {path} " in line)
        assert spec in row, row
    assert np.isfinite(_number(r"trained TinyLM: validation loss (\S+) nats/byte", out))


# -- reshard -------------------------------------------------------------------------------------


def test_reshard_script_continues_the_loss_on_a_new_layout(results: dict[str, Result]) -> None:
    out = results["reshard_script"].check()
    assert "data=2 × tensor=4: resumed at step 2" in out
    q = [line for line in out.splitlines() if line.strip().startswith("blocks/0/attn/q/kernel")]
    assert "shard (32, 16) of (32, 32)" in q[0]  # TP=2
    assert "shard (32, 8) of (32, 32)" in q[1]  # TP=4, after the restore
    diff = _number(r"vs uninterrupted TP=2, over 4 steps: (\S+)", out)
    assert diff < 1e-5


def test_reshard_yaml_resumes_on_tp4(results: dict[str, Result]) -> None:
    first = results["reshard_yaml_tp2"].check()
    second = results["reshard_yaml_tp4"].check()
    assert "mesh data=4 × tensor=2" in first
    assert "mesh data=2 × tensor=4" in second
    assert "Resuming from checkpoint step 2" in second
    assert "config changed since that checkpoint: mesh.shape: [4, 2] -> [2, 4]" in second
    rows = _csv(_run_dir(results["reshard_yaml_tp4"]) / "metrics.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    losses = [float(r["loss"]) for r in rows]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_every_example_has_a_readme_and_a_config() -> None:
    configs = {p.stem for p in CONFIGS.glob("*.yaml")}
    for name, config in (
        ("mnist_dp", "mnist_dp"),
        ("gpt_small_tp", "gpt_small_tp"),
        ("gpt_small_pp", "gpt_small_pp"),
        ("flax_nnx", "flax_nnx"),
        ("mixed_precision", "mixed_precision"),
        ("reshard", "reshard"),
    ):
        assert (EXAMPLES / name / "README.md").is_file(), name
        assert (EXAMPLES / name / "train.py").is_file(), name
        assert config in configs, name
