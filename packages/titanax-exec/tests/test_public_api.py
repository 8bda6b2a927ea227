"""Pins the public API of titanax.exec."""

from __future__ import annotations

import titanax.exec
from titanax.exec import CheckpointStore, MetricSink, ResumableData


def test_all_is_pinned() -> None:
    assert sorted(titanax.exec.__all__) == sorted(
        [
            "PEAK_BF16_FLOPS",
            "TOLERANCES",
            "StepComparison",
            "VerifyReport",
            "verify_layout",
            "CheckpointStore",
            "Collective",
            "CompileReport",
            "CompiledStep",
            "Engine",
            "ExecError",
            "LossScale",
            "MetricSink",
            "NonFiniteError",
            "Precision",
            "RecompileError",
            "RematPolicy",
            "ResumableData",
            "StateError",
            "StepContext",
            "StepFunction",
            "TrainState",
            "TrainingInterrupted",
            "__version__",
            "checkpoint_policy",
            "from_saveable",
            "optimizer_fingerprint",
            "parse_collectives",
            "peak_flops_per_device",
            "remat",
            "step_fn",
            "to_saveable",
        ]
    )
    for name in titanax.exec.__all__:
        assert hasattr(titanax.exec, name)


def test_protocols_are_structural() -> None:
    class Sink:
        def write(self, step: int, metrics: dict[str, float]) -> None: ...

        def close(self) -> None: ...

    class Data:
        position = 0

        def seek(self, position: int) -> None: ...

    assert isinstance(Sink(), MetricSink)
    assert isinstance(Data(), ResumableData)
    assert not isinstance(Sink(), CheckpointStore)
