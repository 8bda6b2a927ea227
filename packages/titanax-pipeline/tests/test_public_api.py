"""Pins the public API of titanax.pipeline."""

from __future__ import annotations

import titanax.pipeline
from titanax.mesh import TitanaxError


def test_all_is_pinned() -> None:
    assert sorted(titanax.pipeline.__all__) == [
        "Arrival",
        "Op",
        "PipelineError",
        "PipelineOutput",
        "Schedule",
        "ScheduleKind",
        "__version__",
        "build_schedule",
        "layer_permutation",
        "make_pipeline",
        "pipeline_value_and_grad",
        "plot_schedule",
        "reference_pipeline",
        "to_natural_order",
        "to_storage_order",
    ]
    for name in titanax.pipeline.__all__:
        assert hasattr(titanax.pipeline, name)


def test_error_shares_the_root() -> None:
    assert issubclass(titanax.pipeline.PipelineError, TitanaxError)
    assert issubclass(titanax.pipeline.PipelineError, ValueError)


def test_version() -> None:
    assert titanax.pipeline.__version__ == "0.2.0"
