"""Problems across sections and against the devices: mesh, plan, mode, rules, batch, optimizer.

The test process has 8 simulated CPU devices; ``prepare`` checks configs against them.
"""

from __future__ import annotations

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
    assert (
        "optimizer.schedule.kwargs: optax.warmup_cosine_decay_schedule(**kwargs) rejected" in line
    )
    (line,) = _problems(path, overrides=["optimizer.schedule=null", "optimizer.kwargs={bogus: 1}"])
    assert "optimizer.kwargs: optax.adamw(learning_rate=..., **kwargs) rejected them" in line
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
