"""YAML -> typed config: schema, locations, environment substitution, --set overrides."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest

from titanax.cli import (
    CNNModel,
    Config,
    ConfigError,
    GPTModel,
    MeshConfig,
    MLPModel,
    OptimizerConfig,
    Problem,
    RunConfig,
    ScheduleConfig,
    TPConfig,
    load_config,
    save_config,
)
from titanax.cli._load import read_config
from titanax.cli._yaml import apply_overrides, format_path, read_yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]
WriteYaml = Callable[[str, str], pathlib.Path]


def _lines(err: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [p.line() for p in err.value.problems]


# -- the shipped examples -------------------------------------------------------------------------


def test_main_job_config_loads_with_its_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TITANAX_RUNS", raising=False)
    config = load_config(ROOT / "examples" / "configs" / "gpt_small_tp.yaml")
    assert config.run.dir == "runs/gpt_small_tp"  # ${TITANAX_RUNS:runs} took its default
    assert config.run.cpu_devices == 8
    assert (config.mesh.axes, config.mesh.shape) == (("data", "tensor"), (4, 2))
    assert config.plan.tp == TPConfig(axis="tensor", rules="gpt")
    assert config.plan.pp is None
    assert config.plan.fsdp is None
    assert config.model == GPTModel(vocab_size=256, seq_len=128, d_model=128, n_heads=4, n_layers=4)
    assert config.optimizer.schedule == ScheduleConfig(
        name="warmup_cosine_decay_schedule",
        kwargs={
            "init_value": 0.0,
            "peak_value": 3.0e-3,
            "warmup_steps": 30,
            "decay_steps": 300,
            "end_value": 3.0e-4,
        },
    )
    monkeypatch.setenv("TITANAX_RUNS", "/scratch/me")
    config = load_config(ROOT / "examples" / "configs" / "gpt_small_tp.yaml")
    assert config.run.dir == "/scratch/me/gpt_small_tp"


def test_every_example_config_loads() -> None:
    found = sorted((ROOT / "examples" / "configs").glob("*.yaml"))
    assert {p.name for p in found} >= {"gpt_small_tp.yaml", "gpt2_small_tp.yaml"}
    for path in found:
        assert isinstance(load_config(path), Config), path


def test_gpt2_small_config_has_the_gpt2_small_shape() -> None:
    config = load_config(ROOT / "examples" / "configs" / "gpt2_small_tp.yaml")
    model = config.model
    assert isinstance(model, GPTModel)
    assert (model.n_layers, model.d_model, model.n_heads, model.seq_len) == (12, 768, 12, 1024)
    assert config.run.cpu_devices is None  # uses the accelerators JAX finds


# -- round trip -----------------------------------------------------------------------------------


def test_resolved_config_round_trips(tmp_path: pathlib.Path) -> None:
    config = load_config(
        ROOT / "examples" / "configs" / "gpt_small_tp.yaml",
        overrides=["run.steps=7", "plan.rules={head/kernel: [null, tensor]}"],
    )
    path = save_config(config, tmp_path / "resolved.yaml")
    again = load_config(path)
    assert again == config
    assert again.plan.rules == {"head/kernel": [None, "tensor"]}
    assert again.to_dict() == config.to_dict()


def test_defaults_make_a_valid_config(write_yaml: WriteYaml) -> None:
    config = load_config(write_yaml("empty.yaml", ""))
    assert config == Config()
    assert isinstance(config.model, GPTModel)


# -- schema problems ------------------------------------------------------------------------------


def test_misspelled_key_names_line_path_and_closest_name(write_yaml: WriteYaml) -> None:
    path = write_yaml("c.yaml", "run:\n  name: x\n  stpes: 10\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:3: run\.stpes: unknown key 'stpes'; did you "
                       r"mean 'steps'\?") as err:  # fmt: skip
        load_config(path)
    assert len(err.value.problems) == 1
    assert "\n" not in str(err.value)


def test_misspelled_section_is_suggested(write_yaml: WriteYaml) -> None:
    path = write_yaml("c.yaml", "optimiser:\n  name: sgd\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:1: optimiser: unknown section 'optimiser'; "
                       r"did you mean 'optimizer'\?"):  # fmt: skip
        load_config(path)


def test_wrong_type_names_expected_and_received(write_yaml: WriteYaml) -> None:
    path = write_yaml("c.yaml", "run:\n  steps: ten\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: run\.steps: expected an int, got str "
                       r"'ten'\."):  # fmt: skip
        load_config(path)


def test_every_problem_is_reported_at_once(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "c.yaml",
        """
        run:
          steps: 0
          seed: -1
        mesh:
          axes: [data, data]
          shape: [2]
        model:
          kind: gpt
          n_layer: 3
        precision:
          compute_dtype: bfloat32
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert _lines(err) == [
        f"{path}:3: run.steps: must be a positive int, got 0.",
        f"{path}:4: run.seed: must be a non-negative int, got -1.",
        f"{path}:6: mesh.axes: axis names ['data'] appear twice; every axis needs its own name.",
        f"{path}:7: mesh.shape: has 1 sizes for 2 axes ['data', 'data']; give one size per axis.",
        f"{path}:10: model.n_layer: unknown key 'n_layer'; did you mean 'n_layers'? (valid keys "
        "of model: kind, vocab_size, seq_len, d_model, n_heads, n_layers, d_ff, dropout, "
        "init_std).",
        f"{path}:12: precision.compute_dtype: expected one of 'float32', 'bfloat16', 'float16', "
        "got str 'bfloat32'; did you mean 'float32'?",
    ]


def test_model_kind_selects_the_record(write_yaml: WriteYaml) -> None:
    mlp = load_config(write_yaml("a.yaml", "model: {kind: mlp, hidden: [32, 16]}\n"))
    assert mlp.model == MLPModel(hidden=(32, 16))
    cnn = load_config(write_yaml("b.yaml", "model: {kind: cnn, channels: [8]}\n"))
    assert cnn.model == CNNModel(channels=(8,))
    with pytest.raises(ConfigError, match=r"model\.kind: unknown kind 'cnm'; expected one of "
                       r"\['gpt', 'mlp', 'cnn', 'flax_nnx'\]; did you mean 'cnn'\?"):  # fmt: skip
        load_config(write_yaml("c.yaml", "model: {kind: cnm}\n"))
    with pytest.raises(ConfigError, match=r"model\.d_model: unknown key 'd_model'"):
        load_config(write_yaml("d.yaml", "model: {kind: mlp, d_model: 3}\n"))


def test_numbers_in_yaml_1_1_exponent_form_are_floats(write_yaml: WriteYaml) -> None:
    # YAML 1.1 reads 3e-4 as a string; a float field accepts it.
    config = load_config(write_yaml("c.yaml", "optimizer: {learning_rate: 3e-4}\n"))
    assert config.optimizer == OptimizerConfig(learning_rate=3e-4)
    with pytest.raises(ConfigError, match=r"optimizer\.learning_rate: expected a number or null, "
                       r"got str 'fast'\."):  # fmt: skip
        load_config(write_yaml("d.yaml", "optimizer: {learning_rate: fast}\n"))


def test_union_fields_report_the_alternatives(write_yaml: WriteYaml) -> None:
    with pytest.raises(ConfigError, match=r"plan\.tp\.rules: expected a string or a mapping, got "
                       r"int 5\."):  # fmt: skip
        load_config(write_yaml("c.yaml", "plan: {tp: {rules: 5}}\n"))
    with pytest.raises(ConfigError, match=r"plan\.tp\.rules: unknown preset 'llama'"):
        load_config(write_yaml("d.yaml", "plan: {tp: {rules: llama}}\n"))
    with pytest.raises(ConfigError, match=r"run\.cpu_devices: expected an int or null, got str "
                       r"'many'\."):  # fmt: skip
        load_config(write_yaml("e.yaml", "run: {cpu_devices: many}\n"))


def test_missing_required_key(write_yaml: WriteYaml) -> None:
    path = write_yaml("c.yaml", "optimizer:\n  schedule:\n    kwargs: {}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: optimizer\.schedule\.name: missing "
                       r"required key 'name'\."):  # fmt: skip
        load_config(path)


def test_record_checks_name_their_field(write_yaml: WriteYaml) -> None:
    text = "plan: {pp: {stages: 2, schedule: 1f1b, virtual_stages: 2}}\ndata: {source: mnist_idx}"
    with pytest.raises(ConfigError) as err:
        load_config(write_yaml("c.yaml", text + "\n"))
    assert [p.path for p in err.value.problems] == ["plan.pp.virtual_stages", "data.path"]
    with pytest.raises(ConfigError, match=r"learning_rate goes in optimizer\.learning_rate"):
        OptimizerConfig(kwargs={"learning_rate": 0.1})
    with pytest.raises(ConfigError, match=r"steps: must be a positive int, got 0"):
        RunConfig(steps=0)
    with pytest.raises(ConfigError, match=r"shape: \[-1, -1\] has more than one -1"):
        MeshConfig(axes=("a", "b"), shape=(-1, -1))


# -- YAML reading ---------------------------------------------------------------------------------


def test_invalid_yaml_names_the_line(write_yaml: WriteYaml) -> None:
    path = write_yaml("c.yaml", "run:\n  steps: 3\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:4: not valid YAML"):
        load_config(path)


def test_missing_file_and_non_mapping_top_level(write_yaml: WriteYaml) -> None:
    with pytest.raises(ConfigError, match=r"config file '.*nope\.yaml' does not exist"):
        load_config(pathlib.Path("/nonexistent/nope.yaml"))
    with pytest.raises(ConfigError, match=r"c\.yaml:1: the top level must be a mapping"):
        load_config(write_yaml("c.yaml", "- a\n- b\n"))


def test_duplicate_keys_and_python_tags_are_refused(write_yaml: WriteYaml) -> None:
    path = write_yaml("c.yaml", "run:\n  steps: 3\n  steps: 4\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:3: run\.steps: duplicate key \(first at "
                       r".*c\.yaml:2\)"):  # fmt: skip
        load_config(path)
    with pytest.raises(ConfigError, match=r"d\.yaml:1: run: tag '!!python/object/apply:os\.system' "
                       r"is not allowed"):  # fmt: skip
        load_config(write_yaml("d.yaml", "run: !!python/object/apply:os.system ['true']\n"))
    with pytest.raises(ConfigError, match=r"e\.yaml:1: run\.name: tag '!!python/name:os\.system' "
                       r"is not allowed"):  # fmt: skip
        load_config(write_yaml("e.yaml", "run: {name: !!python/name:os.system ''}\n"))


def test_locations_cover_keys_and_items(write_yaml: WriteYaml) -> None:
    path = write_yaml("c.yaml", "mesh:\n  axes:\n    - data\n    - tensor\n")
    tree, locations, problems = read_yaml(path)
    assert tree == {"mesh": {"axes": ["data", "tensor"]}}
    assert problems == []
    assert locations[("mesh",)] == f"{path}:1"
    assert locations[("mesh", "axes", 1)] == f"{path}:4"
    assert format_path(("plan", "rules", "head/kernel", 0)) == "plan.rules['head/kernel'][0]"


# -- environment ----------------------------------------------------------------------------------


def test_env_substitution_types_and_defaults(
    write_yaml: WriteYaml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TX_STEPS", "42")
    monkeypatch.delenv("TX_UNSET", raising=False)
    text = """
    run:
      steps: ${TX_STEPS}
      name: "${TX_STEPS}"
      dir: ${TX_UNSET:/tmp/x}/run
      eval_batches: ${TX_UNSET:7}
    """
    config = load_config(write_yaml("c.yaml", text))
    assert config.run.steps == 42  # unquoted: re-read as YAML, an int
    assert config.run.name == "42"  # quoted: stays a string
    assert config.run.dir == "/tmp/x/run"
    assert config.run.eval_batches == 7


def test_missing_env_var_without_default(
    write_yaml: WriteYaml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TX_UNSET", raising=False)
    path = write_yaml("c.yaml", "run:\n  name: x\n  steps: ${TX_UNSET}\n  seed: bad\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert _lines(err) == [
        f"{path}:3: run.steps: environment variable 'TX_UNSET' is not set and ${{TX_UNSET}} has "
        "no default; export TX_UNSET=... or write ${TX_UNSET:default}.",
        f"{path}:4: run.seed: expected an int, got str 'bad'.",
    ]


# -- overrides ------------------------------------------------------------------------------------


def test_overrides_are_typed_and_located(write_yaml: WriteYaml) -> None:
    path = write_yaml("c.yaml", "run: {steps: 3}\nmesh: {axes: [data, tensor], shape: [4, 2]}\n")
    config = load_config(
        path,
        overrides=["run.steps=9", "mesh.shape.1=1", "mesh.shape.0=8", "plan.dp.axis=data"],
    )
    assert config.run.steps == 9
    assert config.mesh.shape == (8, 1)
    assert config.plan.dp is not None
    assert config.plan.dp.axis == "data"
    with pytest.raises(ConfigError, match=r"--set run\.steps=abc: run\.steps: expected an int, "
                       r"got str 'abc'\."):  # fmt: skip
        load_config(path, overrides=["run.steps=abc"])
    with pytest.raises(ConfigError, match=r"--set run\.stepz=4: run\.stepz: unknown key 'stepz'; "
                       r"did you mean 'steps'\?"):  # fmt: skip
        load_config(path, overrides=["run.stepz=4"])


def test_malformed_overrides(write_yaml: WriteYaml) -> None:
    tree, locations, _ = read_yaml(write_yaml("c.yaml", "run: {steps: 3}\n"))
    with pytest.raises(ConfigError) as err:
        apply_overrides(tree, locations, ["run.steps", "run..x=1", "run.steps.x=1", "a=[1"])
    assert [p.message.split(":")[0] for p in err.value.problems] == [
        "expected --set key.path=value.",
        "expected --set key.path=value.",
        "cannot set a key inside a value that is not a mapping.",
        "the value is not valid YAML",
    ]
    assert err.value.problems[0] == Problem(
        path="run.steps", message="expected --set key.path=value.", location="--set run.steps"
    )


def test_read_config_keeps_good_sections(write_yaml: WriteYaml) -> None:
    loaded = read_config(write_yaml("c.yaml", "run: {steps: x}\nmesh: {axes: [a], shape: [2]}\n"))
    assert loaded.config is None
    assert "run" not in loaded.sections
    assert loaded.sections["mesh"] == MeshConfig(axes=("a",), shape=(2,))
    assert [p.path for p in loaded.problems] == ["run.steps"]


def test_empty_env_default_and_quoted_numbers(
    write_yaml: WriteYaml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TX_EMPTY", raising=False)
    monkeypatch.delenv("TX_STEPS", raising=False)
    path = write_yaml(
        "c.yaml",
        """
        run:
          name: run${TX_EMPTY:}
          dir: ${TX_EMPTY:}
          compilation_cache: "${TX_EMPTY:}"
        """,
    )
    tree, _, problems = read_yaml(path)
    assert problems == []
    assert tree["run"] == {"name": "run", "dir": "", "compilation_cache": ""}
    with pytest.raises(ConfigError, match=r"run\.dir: must name a directory"):
        load_config(path)  # an empty run.dir is refused by the schema, not read as null
    path = write_yaml("d.yaml", 'run:\n  steps: "${TX_STEPS:4}"\n  eval_every: ${TX_STEPS:4}\n')
    with pytest.raises(
        ConfigError,
        match=r"d\.yaml:2: run\.steps: expected an int, got str '4' \(quoted in the file, so YAML "
        r"reads a string; remove the quotes: an unquoted \$\{NAME:default\} is read as an int "
        r"after substitution\)\.$",
    ):
        load_config(path)
    monkeypatch.setenv("TX_STEPS", "7")
    assert load_config(path, overrides=["run.steps=5"]).run.eval_every == 7


def test_pp_activations_reach_the_plan(write_yaml: WriteYaml) -> None:
    from titanax.cli._build import build_plan

    text = "plan: {pp: {stages: 2, microbatches: 2, activations: stash}}\n"
    config = load_config(write_yaml("c.yaml", text))
    pp = build_plan(config.plan, mode="pp").pipeline_parallel
    assert pp is not None
    assert (pp.activations, pp.microbatches) == ("stash", 2)
    with pytest.raises(
        ConfigError,
        match=r"c\.yaml:1: plan\.pp\.activations: expected one of 'recompute', 'stash', got str "
        r"'remat'",
    ):
        load_config(write_yaml("c.yaml", text.replace("stash", "remat")))
