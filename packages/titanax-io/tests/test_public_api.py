"""Pins the public API of titanax.io and the error hierarchy."""

from __future__ import annotations

import inspect

import titanax.io
import titanax.mesh


def test_all_is_pinned() -> None:
    assert sorted(titanax.io.__all__) == [
        "CSVSink",
        "Change",
        "CheckpointError",
        "CheckpointInfo",
        "CheckpointSaveError",
        "CompatibilityReport",
        "DataError",
        "DevicePrefetcher",
        "JSONLSink",
        "LeafInfo",
        "MetricTypeError",
        "OrbaxCheckpointer",
        "ShardedLoader",
        "SinkError",
        "StdoutSink",
        "TensorBoardSink",
        "TokenWindows",
        "__version__",
        "default_collate",
        "inspect_checkpoint",
        "plot_metrics",
        "prefetch_to_device",
        "read_metrics",
        "to_global_arrays",
        "validate_checkpoint_compatibility",
    ]
    for name in titanax.io.__all__:
        assert hasattr(titanax.io, name)


def test_errors_share_the_root() -> None:
    for err in (titanax.io.CheckpointError, titanax.io.DataError, titanax.io.SinkError):
        assert issubclass(err, titanax.mesh.TitanaxError)
        assert issubclass(err, ValueError)
    assert issubclass(titanax.io.CheckpointSaveError, titanax.mesh.TitanaxError)
    assert issubclass(titanax.io.CheckpointSaveError, RuntimeError)
    assert issubclass(titanax.io.MetricTypeError, titanax.mesh.TitanaxError)
    assert issubclass(titanax.io.MetricTypeError, TypeError)


def _params(func: object) -> list[tuple[str, str]]:
    sig = inspect.signature(func)  # type: ignore[arg-type]
    return [(p.name, p.kind.name) for p in sig.parameters.values()]


def test_implements_the_exec_protocols_structurally() -> None:
    # titanax.exec defines the protocols; io must not import it, so check the shapes here.
    ckpt = titanax.io.OrbaxCheckpointer
    assert _params(ckpt.save)[:4] == [
        ("self", "POSITIONAL_OR_KEYWORD"),
        ("step", "POSITIONAL_OR_KEYWORD"),
        ("state", "POSITIONAL_OR_KEYWORD"),
        ("metadata", "KEYWORD_ONLY"),
    ]
    assert [n for n, _ in _params(ckpt.restore)][:3] == ["self", "step", "target"]
    for name in ("latest_step", "wait", "close"):
        assert callable(getattr(ckpt, name))
    for sink in (
        titanax.io.CSVSink,
        titanax.io.JSONLSink,
        titanax.io.StdoutSink,
        titanax.io.TensorBoardSink,
    ):
        assert [n for n, _ in _params(sink.write)] == ["self", "step", "metrics"]
        assert callable(sink.close)
    for data in (titanax.io.ShardedLoader, titanax.io.DevicePrefetcher):
        assert isinstance(data.position, property)
        assert [n for n, _ in _params(data.seek)] == ["self", "position"]


def test_version_and_the_0_2_options() -> None:
    assert titanax.io.__version__ == "0.2.0"
    for sink in (titanax.io.CSVSink, titanax.io.JSONLSink, titanax.io.TensorBoardSink):
        params = dict(_params(sink.__init__))
        assert params["resume_from_step"] == "KEYWORD_ONLY", sink
        assert inspect.signature(sink.__init__).parameters["resume_from_step"].default is None
