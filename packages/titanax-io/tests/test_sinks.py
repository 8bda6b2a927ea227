"""Metric sinks (stdout, CSV, JSONL, TensorBoard) and the loss-curve plot."""

from __future__ import annotations

import csv
import io
import json
import logging
import pathlib
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
from rich.console import Console

import titanax.io._sinks as sinks_module
from titanax.io import (
    CSVSink,
    JSONLSink,
    MetricTypeError,
    SinkError,
    StdoutSink,
    TensorBoardSink,
    plot_metrics,
    read_metrics,
)


def test_csv_columns_fixed_by_first_row(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "run" / "metrics.csv"
    with CSVSink(path) as sink:
        assert sink.columns is None
        sink.write(1, {"loss": 2.5, "lr": np.float32(1e-3)})
        sink.write(2, {"loss": 2.25})  # a missing metric is an empty cell
        assert sink.columns == ("step", "loss", "lr")
        with pytest.raises(
            SinkError,
            match=r"the row does not fit the CSV header \['step', 'loss', 'lr'\]: new metric\(s\) "
            r"\['eval_loss'\], missing \['lr'\] \(those would be empty cells\)\. A CSV file "
            r"cannot grow columns .*JSONLSink",
        ):
            sink.write(3, {"loss": 2.0, "eval_loss": 2.1})
    rows = list(csv.reader(path.read_text().splitlines()))
    assert rows[0] == ["step", "loss", "lr"]
    assert rows[1][:2] == ["1", "2.5"]
    assert float(rows[1][2]) == float(np.float32(1e-3))
    assert rows[2] == ["2", "2.25", ""]
    # A resumed run continues the file and keeps its columns.
    with CSVSink(path) as resumed:
        assert resumed.columns == ("step", "loss", "lr")
        resumed.write(3, {"lr": 5e-4, "loss": 2.0})
        with pytest.raises(SinkError, match=r"'step' is the first column"):
            resumed.write(4, {"step": 4.0})
    assert path.read_text().splitlines()[-1] == "3,2.0,0.0005"
    with CSVSink(path, append=False) as fresh:
        fresh.write(0, {"acc": 0.5})
    assert path.read_text().splitlines() == ["step,acc", "0,0.5"]


def _strict_json(line: str) -> Any:
    """``json.loads`` that refuses NaN / Infinity, as RFC 8259 parsers (JavaScript, jq) do."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


def test_jsonl_rows_are_free_form_and_strict_json(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with JSONLSink(path) as sink:
        sink.write(1, {"loss": 2.5})
        sink.write(2, {"loss": 2.0, "eval_loss": float("nan")})
        sink.write(3, {"loss": float("inf"), "gnorm": np.float32("-inf"), "lr": 1e-3})
        with pytest.raises(SinkError, match=r"\['wall_time'\] are written by the sink"):
            sink.write(4, {"wall_time": 1.0})
    rows = [_strict_json(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["loss"] == 2.5
    assert rows[1]["eval_loss"] is None  # non-finite -> null
    assert (rows[2]["loss"], rows[2]["gnorm"], rows[2]["lr"]) == (None, None, 1e-3)
    assert all(isinstance(r["wall_time"], float) for r in rows)
    assert read_metrics(path)["loss"] == [(1, 2.5), (2, 2.0)]  # null is skipped


def test_csv_resume_drops_rows_after_the_checkpoint(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metrics.csv"
    with CSVSink(path) as sink:  # the run that crashed after logging step 5
        for step in range(1, 6):
            sink.write(step, {"loss": float(step), "lr": 0.1})
    with open(path, "a") as handle:
        handle.write("6,0.")  # killed mid-row
    with caplog.at_level(logging.WARNING, logger="titanax.io._sinks"):
        resumed = CSVSink(path, resume_from_step=3)  # resumed from the step-3 checkpoint
    assert "dropped 3 of 6 rows" in caplog.text
    with resumed:
        assert resumed.columns == ("step", "loss", "lr")
        for step in (4, 5):
            resumed.write(step, {"loss": step / 10, "lr": 0.1})
    rows = list(csv.reader(path.read_text().splitlines()))
    assert rows == [
        ["step", "loss", "lr"],
        ["1", "1.0", "0.1"],
        ["2", "2.0", "0.1"],
        ["3", "3.0", "0.1"],
        ["4", "0.4", "0.1"],
        ["5", "0.5", "0.1"],
    ]
    # Without resume_from_step, a cut last row is ended before appending: new rows stay whole.
    with open(path, "a") as handle:
        handle.write("6,0.")
    with CSVSink(path) as sink:
        sink.write(6, {"loss": 0.6})
    assert path.read_text().splitlines()[-2:] == ["6,0.", "6,0.6,"]


def test_jsonl_resume_drops_rows_after_the_checkpoint(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with JSONLSink(path) as sink:
        for step in range(0, 50, 10):
            sink.write(step, {"loss": float(step)})
    with open(path, "a") as handle:
        handle.write('{"step": 50, "lo')
    with JSONLSink(path, resume_from_step=20) as resumed:
        resumed.write(30, {"loss": -30.0})
    rows = [_strict_json(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(0, 0.0), (10, 10.0), (20, 20.0), (30, -30.0)]
    with JSONLSink(path, resume_from_step=100):  # nothing after step 100: file unchanged
        pass
    assert len(path.read_text().splitlines()) == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resume_from_step": -1}, r"resume_from_step=-1 must be None or a non-negative int"),
        ({"resume_from_step": True}, r"resume_from_step=True must be None or a non-negative"),
        ({"resume_from_step": 3, "append": False}, r"resume_from_step=3 needs append=True"),
    ],
)
@pytest.mark.parametrize("sink", [CSVSink, JSONLSink])
def test_resume_option_checked(
    tmp_path: pathlib.Path, sink: Any, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(SinkError, match=match):
        sink(tmp_path / "m", **kwargs)


def test_file_sink_path_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SinkError, match=r"CSVSink: path '.*' is an existing directory; .*\.csv"):
        CSVSink(tmp_path)
    with pytest.raises(SinkError, match=r"JSONLSink: path .* is an existing directory"):
        JSONLSink(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SinkError, match=r"TensorBoardSink: logdir .* is an existing file"):
        TensorBoardSink(tmp_path / "file")
    sink = CSVSink(tmp_path / "file" / "metrics.csv")  # parent is a file: fails at first write
    with pytest.raises(SinkError, match=r"CSVSink: cannot open .*metrics.csv for writing"):
        sink.write(1, {"loss": 1.0})
    (tmp_path / "foreign.csv").write_text("epoch,acc\n1,0.5\n")
    with pytest.raises(SinkError, match=r"does not start with a 'step' column \(header \['epoch'"):
        CSVSink(tmp_path / "foreign.csv")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SinkError, match=r"cannot read the existing file .*UnicodeDecodeError"):
        CSVSink(tmp_path / "binary.csv")


def test_stdout_sink_prints_one_line_per_write() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, color_system=None, width=200)
    with StdoutSink(console=console, keys=("loss", "tokens_per_s"), digits=3) as sink:
        sink.write(10, {"tokens_per_s": 12345.6, "loss": 2.31234, "hidden": 1.0})
    assert buffer.getvalue().strip() == "step 10 │ loss 2.31 │ tokens_per_s 1.23e+04"


@pytest.mark.parametrize(
    ("metrics", "error", "match"),
    [
        (
            {"loss": jnp.float32(2.0)},
            MetricTypeError,
            r"metric 'loss' is a jax.Array "
            r"float32\[\].*jax.device_get\(metrics\)",
        ),
        ({"loss": "2.0"}, MetricTypeError, r"metric 'loss' is a str, not a host number"),
        ({"loss": np.ones(2)}, MetricTypeError, r"metric 'loss' is a ndarray"),
        ({3: 1.0}, SinkError, r"metric name 3 must be a non-empty string"),
        ([("loss", 1.0)], SinkError, r"metrics must be a mapping"),
    ],
)
def test_sinks_take_host_floats_only(
    tmp_path: pathlib.Path, metrics: Any, error: type[Exception], match: str
) -> None:
    for sink in (CSVSink(tmp_path / "m.csv"), JSONLSink(tmp_path / "m.jsonl"), StdoutSink()):
        with sink, pytest.raises(error, match=match):
            sink.write(1, metrics)


def test_host_scalars_accepted_and_step_checked(tmp_path: pathlib.Path) -> None:
    with JSONLSink(tmp_path / "m.jsonl") as sink:
        sink.write(np.int64(3), {"a": 1, "b": np.float64(0.5), "c": np.array(2.0), "d": True})
        with pytest.raises(MetricTypeError, match=r"step=1.5 must be an int"):
            sink.write(1.5, {"a": 1.0})  # type: ignore[arg-type]
    row = json.loads((tmp_path / "m.jsonl").read_text())
    assert (row["a"], row["b"], row["c"], row["d"]) == (1.0, 0.5, 2.0, 1.0)


def test_closed_sink_refuses_writes(tmp_path: pathlib.Path) -> None:
    sink = CSVSink(tmp_path / "m.csv")
    sink.write(1, {"loss": 1.0})
    sink.close()
    sink.close()
    with pytest.raises(SinkError, match=r"the sink is closed"):
        sink.write(2, {"loss": 1.0})


def test_only_process_zero_writes(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinks_module, "process_index", lambda: 1)
    buffer = io.StringIO()
    with (
        CSVSink(tmp_path / "m.csv") as csv_sink,
        JSONLSink(tmp_path / "m.jsonl") as jsonl_sink,
        StdoutSink(console=Console(file=buffer)) as stdout_sink,
        TensorBoardSink(tmp_path / "tb") as tb_sink,
    ):
        for sink in (csv_sink, jsonl_sink, stdout_sink, tb_sink):
            assert not sink.active
            sink.write(1, {"loss": 1.0})
            with pytest.raises(MetricTypeError, match=r"jax.Array"):  # still checked
                sink.write(1, {"loss": jnp.ones(())})
    assert not any(tmp_path.iterdir())
    assert buffer.getvalue() == ""


def test_tensorboard_events_read_back_with_tensorboard(tmp_path: pathlib.Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    with TensorBoardSink(logdir) as sink:
        assert sink.logdir == logdir
        for step in range(0, 50, 10):
            sink.write(step, {"loss": 3.0 - step / 100, "lr": 1e-3})
    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    assert set(accumulator.Tags()["scalars"]) == {"loss", "lr"}
    events = accumulator.Scalars("loss")
    assert [e.step for e in events] == [0, 10, 20, 30, 40]
    np.testing.assert_allclose([e.value for e in events], [3.0, 2.9, 2.8, 2.7, 2.6], rtol=1e-6)


def test_tensorboard_resume_purges_events_after_the_checkpoint(tmp_path: pathlib.Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    with TensorBoardSink(logdir) as sink:  # the run that crashed after step 4
        for step in range(5):
            sink.write(step, {"loss": float(step)})
    with TensorBoardSink(logdir, resume_from_step=2) as sink:  # same second: a second file
        for step in (3, 4):
            sink.write(step, {"loss": -float(step)})
    assert len(list(logdir.iterdir())) == 2
    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    events = accumulator.Scalars("loss")
    assert [(e.step, e.value) for e in events] == [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, -3.0),
        (4, -4.0),
    ]
    with pytest.raises(SinkError, match=r"resume_from_step='2' must be None or a non-negative"):
        TensorBoardSink(logdir, resume_from_step="2")  # type: ignore[arg-type]


def test_plot_metrics_draws_csv_and_jsonl(tmp_path: pathlib.Path) -> None:
    run = tmp_path / "run"
    with CSVSink(run / "metrics.csv") as sink:
        for step in range(1, 30):
            sink.write(step, {"loss": 3.0 / step, "lr": 1e-3})
    with JSONLSink(run / "eval.jsonl") as sink:
        for step in range(5, 30, 5):
            sink.write(step, {"eval_loss": 3.5 / step})
    with open(run / "eval.jsonl", "a") as handle:
        handle.write('{"step": 31, "eval_lo')  # a run killed mid-write
    series = read_metrics(run)
    assert [s for s, _ in series["eval_loss"]] == [5, 10, 15, 20, 25]
    assert series["loss"][0] == (1, 3.0)
    out = plot_metrics(run, tmp_path / "plots" / "loss.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (700, 400)
    only = plot_metrics(run / "metrics.csv", tmp_path / "one.png", keys=("lr",), title="lr")
    assert only.stat().st_size > 1000
    with pytest.raises(
        SinkError,
        match=r"none of \['acc'\] is in the metric files of .* \(found "
        r"\['eval_loss', 'loss', 'lr'\]\)",
    ):
        plot_metrics(run, tmp_path / "x.png", keys=("acc",))
    with pytest.raises(SinkError, match=r"does not exist"):
        read_metrics(tmp_path / "nope")


def test_stdout_digits_checked() -> None:
    with pytest.raises(SinkError, match=r"digits=0 must be a positive int"):
        StdoutSink(digits=0)
