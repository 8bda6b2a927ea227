"""``titanax verify``: tiny sizes that keep the plan's divisibility, PASS on correct layouts,
FAIL with a per-group diff on a data-parallel step that forgets its gradient ``pmean``."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from typer.testing import CliRunner

from titanax.cli import _recipes, load_config
from titanax.cli._app import app
from titanax.cli._verify import tiny_overrides

runner = CliRunner()
_ORIGINAL_DP = _recipes._dp
WriteYaml = Callable[[str, str], pathlib.Path]


def _invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _group_rows(out: str) -> dict[str, list[str]]:
    """Rows of the per-group table: group -> [largest diff, at step, result]."""
    table = out[out.index("gradient difference per parameter group") :]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 4 and cells[0] != "group":
            rows[cells[0]] = cells[1:]
    return rows


def test_tiny_overrides_keep_the_plan_divisible(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "c.yaml",
        """
        mesh: {axes: [data, fsdp, pipeline, tensor], shape: [1, 1, 2, 4]}
        plan:
          dp: {axis: data, accumulate_steps: 1}
          fsdp: {axis: fsdp}
          tp: {axis: tensor, rules: gpt}
          pp: {axis: pipeline, stages: 2, microbatches: 4, schedule: interleaved,
               virtual_stages: 2}
        model: {kind: gpt, vocab_size: 50304, seq_len: 1024, d_model: 768, n_heads: 12,
                n_layers: 12, dropout: 0.1}
        data: {source: stdlib_bytes, batch_size: 32}
        """,
    )
    sizes = {"data": 1, "fsdp": 1, "pipeline": 2, "tensor": 4}
    assert tiny_overrides(load_config(path), sizes, steps=3) == [
        "data.source=synthetic",
        "data.batch_size=16",  # 16 rows: 4 per microbatch (data 1 × fsdp 1)
        "data.num_samples=96",
        "data.valid_percent=50.0",
        "model.vocab_size=32",
        "model.seq_len=8",
        "model.d_model=32",  # 4 heads (the tensor size) × 8
        "model.n_heads=4",
        "model.n_layers=4",  # stages × virtual stages
        "model.d_ff=null",
        "model.dropout=0.0",
        "plan.fsdp.min_size_bytes=0",
    ]
    flax = write_yaml(
        "f.yaml",
        """
        mesh: {axes: [data, tensor], shape: [2, 8]}
        plan: {dp: {axis: data, accumulate_steps: 2}, tp: {axis: tensor, rules: flax_nnx}}
        model: {kind: flax_nnx, module: "m.py:LM", kwargs: {vocab_size: 256, seq_len: 64,
                n_heads: 4, width: 7}}
        data: {source: synthetic, batch_size: 16}
        """,
    )
    out = tiny_overrides(load_config(flax), {"data": 2, "tensor": 8}, steps=2)
    assert out == [
        "data.source=synthetic",
        "data.batch_size=16",  # a multiple of data 2 × accumulation 2
        "data.num_samples=64",
        "data.valid_percent=50.0",
        "model.kwargs.vocab_size=32",  # kwargs the model has; width is left alone
        "model.kwargs.seq_len=8",
        "model.kwargs.n_heads=8",
    ]


def _dp_without_gradient_pmean(model: Any, plan: Any, schedule: Any) -> Any:
    """The dp recipe with a deliberate bug: the loss is averaged, the gradients are not."""
    from titanax.exec import TrainState, step_fn
    from titanax.mesh import collectives

    recipe = _ORIGINAL_DP(model, plan, schedule)

    @step_fn(view="per_device")
    def train_step(state: TrainState, batch: Mapping[str, Any]) -> Any:
        def loss_fn(params: Any, b: Mapping[str, Any]) -> Any:
            return model.loss(params, b, None, True)

        loss, grads = state.value_and_grad(loss_fn)(state.params, batch)
        loss = collectives.pmean(loss, plan.data_axes)  # no pmean of the gradients
        return state.apply_gradients(grads=grads), {"loss": loss}

    assert _recipes._dp is _dp_without_gradient_pmean
    return dataclasses.replace(recipe, train_step=train_step)


def test_verify_fails_when_the_dp_step_forgets_its_gradient_pmean(
    tiny_dp: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = _invoke("verify", "-c", str(tiny_dp), "--steps", "2", "--no-shrink")
    assert code == 0, out
    assert "verify data=8 (per_device view)" in out
    monkeypatch.setattr(_recipes, "_dp", _dp_without_gradient_pmean)
    code, out = _invoke("verify", "-c", str(tiny_dp), "--steps", "2", "--no-shrink")
    assert code == 1, out
    assert "FAIL: gradients differ in ['layers/0', 'layers/1']" in out
    assert "check the step's reductions" in out
    step_one = next(line for line in out.splitlines() if line.startswith("│    1 │"))
    cells = [c.strip() for c in step_one.split("│")[1:-1]]
    assert float(cells[3]) < 1e-6  # same parameters at step 1: the same (averaged) loss ...
    assert float(cells[5]) > 0.1  # ... but one device's gradients were applied
    assert cells[6] == "FAIL"
    rows = _group_rows(out)
    assert {g: r[2] for g, r in rows.items()} == {"layers/0": "FAIL", "layers/1": "FAIL"}
    assert all(float(diff) > 0.1 for diff, _, _ in rows.values())


def test_verify_pipeline_against_the_unpipelined_model(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "pp.yaml",
        """
        mesh: {axes: [data, pipeline], shape: [4, 2]}
        plan:
          dp: {axis: data}
          pp: {axis: pipeline, stages: 2, microbatches: 2, schedule: interleaved,
               virtual_stages: 2}
        model: {kind: gpt, vocab_size: 256, seq_len: 64, d_model: 64, n_heads: 4, n_layers: 8}
        data: {source: stdlib_bytes, batch_size: 16}
        """,
    )
    code, out = _invoke("verify", "-c", str(path), "--steps", "1")
    assert code == 0, out
    assert "model.n_layers=4" in out  # one layer per (stage, virtual stage)
    assert "under the plan and on 1 device (the unpipelined model)" in out
    assert "PASS: the layout matches one device." in out
    assert {"blocks/attn", "blocks/mlp", "embed/embedding"} <= set(_group_rows(out))


def test_verify_errors(tiny_tp: pathlib.Path) -> None:
    code, out = _invoke("verify", "-c", str(tiny_tp), "--steps", "0")
    assert code == 1
    assert "CLIError: titanax verify: --steps 0 must be at least 1." in out
    code, out = _invoke("verify", "-c", str(tiny_tp), "--set", "model.n_heads=3")
    assert code == 1
    assert "model.n_heads: 3 does not divide d_model=16 into heads." in out
