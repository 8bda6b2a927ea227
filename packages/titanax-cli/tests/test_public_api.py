"""Pins the public API of titanax.cli."""

from __future__ import annotations

import dataclasses

import titanax.cli
from titanax.mesh import TitanaxError


def test_all_is_pinned() -> None:
    assert sorted(titanax.cli.__all__) == [
        "CLIError",
        "CNNModel",
        "CheckpointConfig",
        "Config",
        "ConfigError",
        "DPConfig",
        "DataConfig",
        "FSDPConfig",
        "FlaxNNXModel",
        "GPTModel",
        "LoggingConfig",
        "MLPModel",
        "MeshConfig",
        "OptimizerConfig",
        "PPConfig",
        "PlanConfig",
        "PrecisionConfig",
        "Problem",
        "RunConfig",
        "ScheduleConfig",
        "TPConfig",
        "__version__",
        "load_config",
        "main",
        "save_config",
    ]
    for name in titanax.cli.__all__:
        assert hasattr(titanax.cli, name)


def test_errors_share_the_root() -> None:
    assert issubclass(titanax.cli.ConfigError, TitanaxError)
    assert issubclass(titanax.cli.ConfigError, ValueError)
    assert issubclass(titanax.cli.CLIError, TitanaxError)
    assert issubclass(titanax.cli.CLIError, RuntimeError)


def test_config_records_are_frozen_keyword_only() -> None:
    for name in titanax.cli.__all__:
        record = getattr(titanax.cli, name)
        if isinstance(record, type) and dataclasses.is_dataclass(record):
            params = record.__dataclass_params__  # type: ignore[attr-defined]
            assert params.frozen, name
            assert all(f.kw_only for f in dataclasses.fields(record)), name
