"""``model.kind: flax_nnx``: a user's Flax NNX module under a DP × TP plan with Flax's names."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
from typer.testing import CliRunner

from titanax.cli import ConfigError, FlaxNNXModel, load_config
from titanax.cli._app import app
from titanax.cli._session import prepare

pytest.importorskip("flax")

runner = CliRunner()
WriteYaml = Callable[[str, str], pathlib.Path]
MODELS = pathlib.Path(__file__).with_name("nnx_models.py")

LM = f"""
run: {{name: nnx, dir: "{{root}}/runs/nnx", steps: 1}}
mesh: {{axes: [data, tensor], shape: [4, 2]}}
plan:
  dp: {{axis: data}}
  tp: {{axis: tensor, rules: flax_nnx}}
  rules: {{pos_embed/embedding: []}}
model:
  kind: flax_nnx
  module: {MODELS}:SmallLM
  kwargs: {{vocab_size: 64, seq_len: 16, d_model: 32, n_heads: 4}}
data: {{source: synthetic, batch_size: 8, num_samples: 64}}
"""


def _problems(path: pathlib.Path, *overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        prepare(path, overrides=overrides)
    return [p.line() for p in err.value.problems]


def test_the_model_is_split_into_flax_names_and_laid_out_by_the_flax_rules(
    write_yaml: WriteYaml,
) -> None:
    session = prepare(write_yaml("lm.yaml", LM))
    assert isinstance(session.config.model, FlaxNNXModel)
    assert session.model.summary.startswith("model: Flax NNX SmallLM (")
    import jax
    from jax.sharding import PartitionSpec as P

    shapes = jax.eval_shape(session.model.init, jax.random.key(0))
    specs = session.plan.param_specs(shapes, session.mesh)
    assert shapes["attn"]["query"]["kernel"].shape == (32, 4, 8)  # [d, heads, head_dim]
    assert specs["attn"]["query"]["kernel"] == P(None, "tensor", None)  # heads split
    assert specs["attn"]["out"]["kernel"] == P("tensor", None, None)
    assert specs["mlp"]["up"]["kernel"] == P(None, "tensor")
    assert specs["mlp"]["down"]["kernel"] == P("tensor", None)
    assert specs["embed"]["embedding"] == P("tensor", None)
    assert specs["lm_head"]["kernel"] == P(None, "tensor")
    assert specs["pos_embed"]["embedding"] == P()
    assert session.model.batch["inputs"].shape == (8, 16)


def test_verify_a_flax_model_under_dp_tp(write_yaml: WriteYaml) -> None:
    path = write_yaml("lm.yaml", LM)
    result = runner.invoke(app, ["verify", "-c", str(path), "--steps", "2"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "model.kwargs.vocab_size=32, model.kwargs.seq_len=8, model.kwargs.d_model=16" in out
    assert "model.kwargs.n_heads=2" in out  # the tensor size
    assert "PASS: the layout matches one device." in out
    for group in ("attn/query", "attn/out", "mlp/up", "embed/embedding", "lm_head/kernel"):
        assert f"│ {group} " in out


def test_a_flax_classifier_on_images(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "cls.yaml",
        f"""
        mesh: {{axes: [data], shape: [-1]}}
        plan: {{dp: {{axis: data}}}}
        model: {{kind: flax_nnx, module: "{MODELS}:Classifier", task: classify,
                 kwargs: {{hidden: 8}}}}
        data: {{source: synthetic, batch_size: 16, num_samples: 64}}
        """,
    )
    session = prepare(path, command="dp")
    assert session.model.batch["x"].shape == (16, 8, 8)
    assert "task classify" in session.model.summary


def test_schema_problems(write_yaml: WriteYaml) -> None:
    path = write_yaml("lm.yaml", LM)
    with pytest.raises(ConfigError) as err:
        load_config(
            path,
            overrides=["model.module=nothing", "model.kwargs={seq_len: 8, rngs: 1}"],
        )
    lines = [p.line() for p in err.value.problems]
    assert lines == [
        "--set model.module=nothing: model.module: 'nothing' does not name a class; write "
        "path/to/file.py:ClassName or package.module:ClassName.",
        "--set model.kwargs={seq_len: 8, rngs: 1}: model.kwargs: rngs is passed by the CLI "
        "(nnx.Rngs of run.seed); remove it.",
        "--set model.kwargs={seq_len: 8, rngs: 1}: model.kwargs: task 'lm' needs "
        "kwargs.vocab_size (a positive int: it sizes the token data), got None.",
    ]


def test_module_problems(write_yaml: WriteYaml) -> None:
    path = write_yaml("lm.yaml", LM)
    (line,) = _problems(path, "model.module=missing.py:LM")
    assert "model.module: 'missing.py:LM': no file" in line
    assert "(a relative path is read from the config file's directory)" in line
    (line,) = _problems(path, f"model.module={MODELS}:Nope")
    assert "has no class 'Nope' (classes there: Classifier, MLP, Plain, SmallLM," in line
    (line,) = _problems(path, f"model.module={MODELS}:Plain")
    assert line.endswith(
        "model.module: '" + f"{MODELS}:Plain' is Plain, not a flax.nnx.Module subclass."
    )
    (line,) = _problems(path, "model.module=no_such_package_xyz:LM")
    assert "cannot import module 'no_such_package_xyz'" in line
    (line,) = _problems(path, "model.kwargs.width=3")
    assert "model.kwargs: SmallLM(**kwargs, rngs=...) rejected them: TypeError:" in line
    assert "width" in line
    (line,) = _problems(path, "model.kwargs.n_heads=5")  # 32 is not a multiple of 5 heads
    assert "model.kwargs: SmallLM(**kwargs, rngs=...) rejected them: ValueError:" in line
    (line,) = _problems(
        path, f"model.module={MODELS}:WithBatchNorm", "model.kwargs={vocab_size: 8, seq_len: 4}"
    )
    assert "holds state that is not nnx.Param: norm/mean (BatchStat), norm/var (BatchStat)" in line


def test_model_and_data_must_fit(write_yaml: WriteYaml) -> None:
    path = write_yaml("lm.yaml", LM)
    (line,) = _problems(path, "data.source=digits")
    assert line.endswith(
        "data.source: model kind 'flax_nnx' (task 'lm') needs token data (stdlib_bytes, "
        "synthetic), got 'digits'."
    )
    (line,) = _problems(path, "data.source=stdlib_bytes")
    assert line.endswith(
        "model.kwargs: vocab_size 64 is too small for byte-level data (256 byte values); use 256."
    )
