"""Fixtures of the titanax-cli tests: tiny YAML configs written into the test's directory.

The test process has 8 simulated CPU devices (titanax-testing's plugin), so in-process commands
use configs whose mesh fills 8 devices and that do not ask for another count.
"""

from __future__ import annotations

import pathlib
import textwrap
from collections.abc import Callable

import pytest

from titanax.cli import _app

TINY_DP = """
run: {name: tiny_dp, dir: {root}/runs/dp, steps: 2, eval_batches: 2}
mesh: {axes: [data], shape: [-1]}
plan: {dp: {axis: data}}
model: {kind: mlp, hidden: [16]}
data: {source: synthetic, batch_size: 16, num_samples: 256, valid_percent: 25.0}
optimizer: {name: sgd, learning_rate: 0.1}
checkpoint: {every: 1, keep: 5, async_save: false}
logging: {log_every: 1, progress: false, tensorboard: false, jsonl: true}
"""

TINY_TP = """
run: {name: tiny_tp, dir: {root}/runs/tp, steps: 2, eval_batches: 1}
mesh: {axes: [data, tensor], shape: [4, 2]}
plan: {dp: {axis: data}, tp: {axis: tensor, rules: gpt}}
model: {kind: gpt, vocab_size: 32, seq_len: 8, d_model: 16, n_heads: 2, n_layers: 1}
data: {source: synthetic, batch_size: 8, num_samples: 64}
optimizer:
  name: adamw
  kwargs: {weight_decay: 0.1}
  schedule: {name: warmup_cosine_decay, kwargs: {init_value: 0.0, peak_value: 0.01,
    warmup_steps: 1, decay_steps: 4}}
logging: {log_every: 1, progress: false, tensorboard: false}
"""


@pytest.fixture
def write_yaml(tmp_path: pathlib.Path) -> Callable[[str, str], pathlib.Path]:
    """``write_yaml(name, text)`` writes ``text`` (dedented; ``{root}`` = the test's directory)
    to ``<tmp>/<name>`` and returns the path."""

    def write(name: str, text: str) -> pathlib.Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).replace("{root}", str(tmp_path)), encoding="utf-8")
        return path

    return write


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run without --debug unless a test turns it on."""
    monkeypatch.setitem(_app._DEBUG, "on", False)


@pytest.fixture
def tiny_dp(write_yaml: Callable[[str, str], pathlib.Path]) -> pathlib.Path:
    """A data-parallel MLP on synthetic images, 2 steps on the 8-device data axis."""
    return write_yaml("dp.yaml", TINY_DP)


@pytest.fixture
def tiny_tp(write_yaml: Callable[[str, str], pathlib.Path]) -> pathlib.Path:
    """A one-layer GPT on synthetic tokens, data=4 × tensor=2, 2 steps."""
    return write_yaml("tp.yaml", TINY_TP)
