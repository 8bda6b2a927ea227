"""Problems across sections and against the devices: mesh, plan, mode, rules, batch, optimizer.

The test process has 8 simulated CPU devices; ``prepare`` checks configs against them.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import pytest

from titanax.cli import CLIError, ConfigError
from titanax.cli._session import prepare

WriteYaml = Callable[[str, str], pathlib.Path]

BASE = """
mesh: {axes: [data, tensor], shape: [4, 2]}
plan: {dp: {axis: data}, tp: {axis: tensor, rules: gpt}}
model: {kind: gpt, vocab_size: 32, seq_len: 8, d_model: 16, n_heads: 2, n_layers: 2}
data: {source: synthetic, batch_size: 8}
"""


def _problems(path: pathlib.Path, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as err:
        prepare(path, **kwargs)  # type: ignore[arg-type]
    return [p.line() for p in err.value.problems]


def test_a_good_config_builds_everything(write_yaml: WriteYaml) -> None:
    session = prepare(write_yaml("c.yaml", BASE), command="tp")
    assert session.mode == "tp"
    assert dict(session.mesh.shape) == {"data": 4, "tensor": 2}
    assert session.plan.data_axes == ("data",)
    assert session.plan.tensor_parallel.axis == "tensor"
    assert "8 cpu device(s)" in session.devices
    assert session.model.batch["inputs"].shape == (8, 8)


def test_invalid_mesh_product(write_yaml: WriteYaml) -> None:
    path = write_yaml("c.yaml", BASE + "run: {name: x}\n")
    lines = _problems(path, overrides=["mesh.shape=[4, 3]"])
    assert lines == [
        "--set mesh.shape=[4, 3]: mesh.shape: [4, 3] multiplies to 12, but the mesh must use all "
        "8 cpu device(s) (all JAX found). Make the product 8, or put -1 in one axis."
    ]
    lines = _problems(path, overrides=["mesh.shape=[-1, 3]"])
    assert lines[0].startswith("--set mesh.shape=[-1, 3]: mesh.shape: [-1, 3] cannot fill 8 cpu")
    assert "divisors: [1, 2, 4, 8]" in lines[0]


def test_rule_naming_an_unknown_axis(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "c.yaml",
        """
        mesh: {axes: [data, tensor], shape: [4, 2]}
        plan:
          dp: {axis: data}
          tp:
            axis: tensor
            rules:
              head/kernel: [null, tensr]
          rules:
            embed/embedding: [[data, fsdp], null]
            ln_f/scale: tensor
        model: {kind: gpt, vocab_size: 32, seq_len: 8, d_model: 16, n_heads: 2, n_layers: 1}
        data: {source: synthetic, batch_size: 8}
        """,
    )
    assert _problems(path) == [
        f"{path}:8: plan.tp.rules['head/kernel']: rule 'head/kernel' -> [null, tensr] names "
        "mesh axis 'tensr', which is not in mesh.axes ['data', 'tensor']; did you mean 'tensor'?",
        f"{path}:10: plan.rules['embed/embedding']: rule 'embed/embedding' -> [[data, fsdp], "
        "null] names mesh axis 'fsdp', which is not in mesh.axes ['data', 'tensor']; add it to "
        "the mesh.",
        f"{path}:11: plan.rules['ln_f/scale']: spec tensor is not a PartitionSpec; write a list "
        "with one entry per dim: null, an axis name, or a list of axis names (e.g. [null, "
        "tensor]).",
    ]


def test_plan_axes_must_be_mesh_axes_with_one_role_each(write_yaml: WriteYaml) -> None:
    path = write_yaml("c.yaml", BASE)
    lines = _problems(path, overrides=["plan.dp.axis=dat", "plan.fsdp={axis: tensor}"])
    assert lines == [  # file lines first, then the overrides
        f"{path}:3: plan.tp.axis: mesh axis 'tensor' already carries plan.fsdp; each "
        "parallelism needs its own axis (size 1 is fine).",
        "--set plan.dp.axis=dat: plan.dp.axis: axis 'dat' is not in mesh.axes ['data', "
        "'tensor']; did you mean 'data'?",
    ]


def test_mode_contradicting_the_plan_names_both(write_yaml: WriteYaml) -> None:
    path = write_yaml("c.yaml", BASE)
    (line,) = _problems(path, command="dp")
    assert (
        "plan.tp: mode 'dp' (data parallel in the per-device view (explicit gradient pmean))"
        in line
    )
    assert "contradicts plan.tp" in line
    assert "Use `titanax run tp` for this plan" in line
    lines = _problems(path, command="pp")
    assert any("mode 'pp'" in line and "needs plan.pp" in line for line in lines)
    with_pp = write_yaml("d.yaml", BASE + "run: {mode: pp}\n")
    (line,) = _problems(with_pp, command="tp")
    assert line.endswith(
        "run.mode: the config says mode 'pp' but the command is `titanax run tp`; run `titanax "
        "run pp` or change run.mode."
    )


def test_tp_mode_refuses_a_pipeline_plan(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "c.yaml",
        """
        mesh: {axes: [data, pipeline], shape: [4, 2]}
        plan: {dp: {axis: data}, pp: {stages: 2, microbatches: 2}}
        model: {kind: gpt, vocab_size: 32, seq_len: 8, d_model: 16, n_heads: 2, n_layers: 2}
        data: {source: synthetic, batch_size: 8}
        """,
    )
    (line,) = _problems(path, command="tp")
    assert (
        ": plan.pp: mode 'tp' (the global view with data / fsdp / tensor axes) contradicts " in line
    )
    assert "use `titanax run pp`" in line


def test_pipeline_shape_checks(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "c.yaml",
        """
        mesh: {axes: [data, pipeline], shape: [2, 4]}
        plan: {dp: {axis: data}, pp: {stages: 2, microbatches: 1, schedule: 1f1b}}
        model: {kind: gpt, vocab_size: 32, seq_len: 8, d_model: 16, n_heads: 2, n_layers: 3,
                dropout: 0.1}
        data: {source: synthetic, batch_size: 6}
        """,
    )
    lines = _problems(path, command="pp")
    text = "\n".join(lines)
    assert "model.dropout: mode 'pp'" in text
    assert "plan.pp.stages: stages=2 but mesh axis 'pipeline' has size 4" in text
    assert "plan.pp.microbatches: 1f1b needs microbatches >= stages (1 < 2)" in text
    assert "model.n_layers: 3 layers do not split into stages × virtual_stages = 2 × 1 = 2" in text


def test_batch_must_divide_over_data_axes_and_accumulation(write_yaml: WriteYaml) -> None:
    path = write_yaml("c.yaml", BASE)
    (line,) = _problems(path, overrides=["data.batch_size=12", "plan.dp.accumulate_steps=2"])
    assert line == (
        "--set data.batch_size=12: data.batch_size: 12 does not divide over data=4 × "
        "accumulate_steps=2 = 8; use a multiple of 8, e.g. 8."
    )


def test_model_and_data_must_fit(write_yaml: WriteYaml) -> None:
    path = write_yaml("c.yaml", BASE)
    lines = _problems(path, overrides=["data.source=digits"])
    assert lines == [
        "--set data.source=digits: data.source: model kind 'gpt' needs token data "
        "(stdlib_bytes, synthetic), got 'digits'."
    ]
    lines = _problems(path, overrides=["data.source=stdlib_bytes"])
    assert lines[0].endswith(
        "model.vocab_size: 32 is too small for byte-level data (256 byte values); use 256."
    )


def test_parameter_layout_problems_come_from_the_plan(write_yaml: WriteYaml) -> None:
    path = write_yaml("c.yaml", BASE)
    lines = _problems(path, overrides=["mesh.shape=[2, 4]", "model.d_model=18", "model.d_ff=36"])
    text = "\n".join(lines)
    assert all(": plan: " in line for line in lines)
    assert "blocks/0/attn/q/kernel" in text
    assert "tensor" in text


def test_optimizer_problems_are_located(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "c.yaml",
        BASE
        + "optimizer:\n  name: adamw\n"
        + "  schedule: {name: warmup_cosine, kwargs: {peak_value: 0.1}}\n",
    )
    (line,) = _problems(path)
    assert line.startswith(f"{path}:8: optimizer.schedule.name: optax has no schedule ")
    assert "did you mean 'warmup_cosine_decay_schedule'?" in line
    (line,) = _problems(path, overrides=["optimizer.schedule.name=warmup_cosine_decay"])
    assert line.endswith(
        "optimizer.schedule.kwargs: optax.warmup_cosine_decay_schedule needs init_value, "
        "warmup_steps, decay_steps: add init_value: ..., warmup_steps: ..., decay_steps: ... to "
        "optimizer.schedule.kwargs."
    )
    (line,) = _problems(path, overrides=["optimizer.schedule=null", "optimizer.kwargs={bogus: 1}"])
    assert (
        "optimizer.kwargs.bogus: optax.adamw has no argument 'bogus' (optax.adamw takes: b1" in line
    )
    (line,) = _problems(path, overrides=["optimizer.schedule=null", "optimizer.name=adamww"])
    assert line.endswith("optimizer.name: optax has no optimizer 'adamww'; did you mean 'adamw'?")


def test_all_problems_come_together(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "c.yaml",
        """
        run: {stpes: 3}
        mesh: {axes: [data, tensor], shape: [4, 3]}
        plan: {dp: {axis: data}, tp: {axis: tensor, rules: {head/kernel: [null, tensr]}}}
        model: {kind: gpt, vocab_size: 32, seq_len: 8, d_model: 16, n_heads: 2, n_layers: 2}
        data: {source: synthetic, batch_size: 8}
        optimizer: {name: adamww}
        """,
    )
    lines = _problems(path, command="tp")
    assert [line.split(": ")[1] for line in lines] == [
        "run.stpes",
        "mesh.shape",
        "plan.tp.rules['head/kernel']",
        "optimizer.name",
    ]


def test_other_device_count_than_the_running_jax(write_yaml: WriteYaml) -> None:
    path = write_yaml("c.yaml", BASE)
    with pytest.raises(CLIError, match=r"cannot simulate 4 CPU devices: JAX already started in "
                       r"this process with 8 cpu device\(s\)"):  # fmt: skip
        prepare(path, cpu_devices=4)
    session = prepare(path, cpu_devices=8)
    assert "(--cpu-devices 8)" in session.devices


def test_learning_rate_next_to_a_schedule_is_refused(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "c.yaml",
        BASE
        + "optimizer:\n  name: adamw\n"
        + "  schedule: {name: constant_schedule, kwargs: {value: 0.01}}\n",
    )
    assert prepare(path).config.optimizer.learning_rate is None  # the schedule alone is fine
    with pytest.raises(
        ConfigError,
        match=r"--set optimizer\.learning_rate=3e-4: optimizer\.learning_rate: 0\.0003 would be "
        r"ignored: optimizer\.schedule \(constant_schedule\) gives the rate\. Set the schedule's "
        r"rate instead \(optimizer\.schedule\.kwargs, e\.g\. peak_value\), or remove "
        r"optimizer\.schedule",
    ):
        prepare(path, overrides=["optimizer.learning_rate=3e-4"])


def test_optimizer_and_schedule_kwargs_follow_the_optax_signatures(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "c.yaml",
        BASE
        + "optimizer:\n"
        + "  name: adamw\n"
        + "  kwargs: {b1: abc, wieght_decay: 0.1, eps: 1e-6, nesterov: 3}\n"
        + "  schedule:\n"
        + "    name: warmup_cosine_decay\n"
        + "    kwargs: {init_value: 0.0, peak_value: x, warmup_steps: 1.5, decay_stesp: 4}\n",
    )
    lines = [line.split(": ", 1)[1] for line in _problems(path)]
    assert lines == [
        "optimizer.kwargs.b1: optax.adamw's argument b1 expects a number (default 0.9), got str "
        "'abc'; write e.g. b1: 0.9.",
        "optimizer.kwargs.wieght_decay: optax.adamw has no argument 'wieght_decay'; did you mean "
        "'weight_decay'? (optax.adamw takes: b1, b2, eps, eps_root, mu_dtype, weight_decay, mask, "
        "nesterov).",
        "optimizer.kwargs.nesterov: optax.adamw's argument nesterov expects true or false "
        "(default False), got int 3; write e.g. nesterov: false.",
        "optimizer.schedule.kwargs.peak_value: optax.warmup_cosine_decay_schedule's argument "
        "peak_value expects a number, got str 'x'; write e.g. peak_value: 0.1.",
        "optimizer.schedule.kwargs.warmup_steps: optax.warmup_cosine_decay_schedule's argument "
        "warmup_steps expects an int, got float 1.5; write e.g. warmup_steps: 100.",
        "optimizer.schedule.kwargs.decay_stesp: optax.warmup_cosine_decay_schedule has no "
        "argument 'decay_stesp'; did you mean 'decay_steps'? (optax.warmup_cosine_decay_schedule "
        "takes: init_value, peak_value, warmup_steps, decay_steps, end_value, exponent).",
        "optimizer.schedule.kwargs: optax.warmup_cosine_decay_schedule needs decay_steps: add "
        "decay_steps: ... to optimizer.schedule.kwargs.",
    ]
    # YAML 1.1 strings such as 1e-6 become numbers; the built optimizer uses them.
    fixed = [
        "optimizer.kwargs={b1: 0.8, eps: 1e-6}",
        "optimizer.schedule.kwargs={init_value: 0.0, peak_value: 1e-2, warmup_steps: 2, "
        "decay_steps: 10}",
    ]
    session = prepare(path, overrides=fixed)
    assert session.schedule is not None
    assert float(session.schedule(2)) == pytest.approx(0.01)


def test_run_directories_that_cannot_be_written(
    write_yaml: WriteYaml, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_yaml("c.yaml", BASE)
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(
        ConfigError,
        match=rf"--set run\.dir={tmp_path}/taken: run\.dir: '{tmp_path}/taken' is an existing "
        r"file, not a directory; choose another path or move the file away\.",
    ):
        prepare(path, overrides=[f"run.dir={tmp_path}/taken"])
    with pytest.raises(
        ConfigError,
        match=rf"checkpoint\.dir: cannot create '{tmp_path}/taken/ckpt': '{tmp_path}/taken' is a "
        r"file, not a directory; choose another path\.",
    ):
        prepare(path, overrides=[f"checkpoint.dir={tmp_path}/taken/ckpt"])
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode)
    )
    with pytest.raises(
        ConfigError,
        match=rf"run\.dir: cannot create '{locked}/run' in '{locked}': permission denied; choose "
        r"a directory you can write to",
    ):
        prepare(path, overrides=[f"run.dir={locked}/run"])


def test_run_creates_its_directory_or_says_why_not(tmp_path: pathlib.Path) -> None:
    from titanax.cli._train import _make_directory

    _make_directory(tmp_path / "a" / "b", "run.dir")
    assert (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the write probe is removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(
        CLIError,
        match=rf"titanax run: cannot use '{tmp_path}/file' \(run\.dir\) as a directory: it is an "
        r"existing file, not a directory\. Choose another path \(--set run\.dir=\.\.\.\)",
    ):
        _make_directory(tmp_path / "file", "run.dir")


def test_validate_lists_schema_mesh_batch_and_layout_problems_together(
    write_yaml: WriteYaml,
) -> None:
    path = write_yaml(
        "c.yaml",
        """
        mesh: {axes: [data, tensor], shape: [4, 3]}
        plan: {dp: {axis: data}, tp: {axis: tensor, rules: gpt}}
        model: {kind: gpt, vocab_size: 32, seq_len: 8, d_model: 16, n_heads: 2, n_layers: 1}
        data: {source: synthetic, batch_size: 7, num_sampels: 64}
        """,
    )
    lines = [line.split(": ", 1)[1] for line in _problems(path)]
    assert [line.split(": ")[0] for line in lines] == [
        "mesh.shape",
        "data.num_sampels",
        "data.batch_size",
    ]
    assert (
        lines[2] == "data.batch_size: 7 does not divide over data=4; use a multiple of 4, e.g. 4."
    )
    # A typo in another section does not stop the plan's check against the parameter shapes.
    lines = _problems(path, overrides=["mesh.shape=[4, 2]", "data.batch_size=8", "run.stpes=2",
                                       "model.vocab_size=33"])  # fmt: skip
    paths = [line.split(": ")[1] for line in lines]
    assert paths == ["plan", "plan", "data.num_sampels", "run.stpes"]  # by line, then --set
    assert "path 'embed/embedding' with shape (33, 16): dim 0 has size 33" in lines[0]
    assert "path 'head/kernel' with shape (16, 33): dim 1 has size 33" in lines[1]


def test_optimizer_kwargs_are_checked_with_a_learning_rate_problem(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "c.yaml",
        BASE
        + "optimizer: {name: adamw, schedule: {name: warmup_cosine_decay, kwargs: {init_value: "
        "0.0, peak_value: 0.01, warmup_steps: 1, decay_steps: 4}}}\n",
    )
    lines = _problems(path, overrides=["optimizer.kwargs.betas=0.9", "optimizer.learning_rate=0.1"])
    assert lines[0] == (
        "--set optimizer.learning_rate=0.1: optimizer.learning_rate: 0.1 would be ignored: "
        "optimizer.schedule (warmup_cosine_decay) gives the rate. Set the schedule's rate instead "
        "(optimizer.schedule.kwargs, e.g. peak_value), or remove optimizer.schedule to train at "
        "a constant learning_rate."
    )
    assert len(lines) == 2  # the optax argument list may grow with the optax version
    assert lines[1].startswith(
        "--set optimizer.kwargs.betas=0.9: optimizer.kwargs.betas: optax.adamw has no argument "
        "'betas' (optax.adamw takes: b1, b2, eps, "
    )


def test_validate_checks_the_mnist_directory(write_yaml: WriteYaml, tmp_path: pathlib.Path) -> None:
    text = (
        "mesh: {axes: [data], shape: [-1]}\nplan: {dp: {axis: data}}\n"
        "model: {kind: mlp, hidden: [16]}\ndata: {source: mnist_idx, path: /nonexistent}\n"
    )
    path = write_yaml("c.yaml", text)
    lines = _problems(path, overrides=["data.batch_size=12"])
    assert lines[0] == (
        f"{path}:4: data.path: '/nonexistent' does not exist; source mnist_idx reads the MNIST "
        "IDX files from this directory (relative paths are relative to the working directory)."
    )
    assert len(lines) == 2  # reported with the other problems
    assert lines[1].startswith("--set data.batch_size=12: data.batch_size: 12 ")
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    (line,) = _problems(path, overrides=[f"data.path={tmp_path / 'idx'}"])
    assert line.startswith(f"--set data.path={tmp_path / 'idx'}: data.path: data.source mnist_idx:")
    assert "has no train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in line
