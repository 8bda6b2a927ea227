"""titanax.cli: the ``titanax`` command — YAML configs, training runs, describe/validate/verify,
checkpoint inspection, loss plots and pipeline schedule timelines."""

from titanax.cli._app import main as main
from titanax.cli._config import CheckpointConfig as CheckpointConfig
from titanax.cli._config import CNNModel as CNNModel
from titanax.cli._config import Config as Config
from titanax.cli._config import DataConfig as DataConfig
from titanax.cli._config import DPConfig as DPConfig
from titanax.cli._config import FlaxNNXModel as FlaxNNXModel
from titanax.cli._config import FSDPConfig as FSDPConfig
from titanax.cli._config import GPTModel as GPTModel
from titanax.cli._config import LoggingConfig as LoggingConfig
from titanax.cli._config import MeshConfig as MeshConfig
from titanax.cli._config import MLPModel as MLPModel
from titanax.cli._config import OptimizerConfig as OptimizerConfig
from titanax.cli._config import PlanConfig as PlanConfig
from titanax.cli._config import PPConfig as PPConfig
from titanax.cli._config import PrecisionConfig as PrecisionConfig
from titanax.cli._config import RunConfig as RunConfig
from titanax.cli._config import ScheduleConfig as ScheduleConfig
from titanax.cli._config import TPConfig as TPConfig
from titanax.cli._errors import CLIError as CLIError
from titanax.cli._errors import ConfigError as ConfigError
from titanax.cli._errors import Problem as Problem
from titanax.cli._load import load_config as load_config
from titanax.cli._load import save_config as save_config
from titanax.cli._version import __version__ as __version__

__all__ = [
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
