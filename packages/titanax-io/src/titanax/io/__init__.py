"""titanax.io: Orbax checkpoints that reshard onto any mesh, data feeding, metric sinks."""

from titanax.io._checkpoint import OrbaxCheckpointer as OrbaxCheckpointer
from titanax.io._compat import Change as Change
from titanax.io._compat import CompatibilityReport as CompatibilityReport
from titanax.io._compat import (
    validate_checkpoint_compatibility as validate_checkpoint_compatibility,
)
from titanax.io._errors import CheckpointError as CheckpointError
from titanax.io._errors import CheckpointSaveError as CheckpointSaveError
from titanax.io._errors import DataError as DataError
from titanax.io._errors import MetricTypeError as MetricTypeError
from titanax.io._errors import SinkError as SinkError
from titanax.io._inspect import CheckpointInfo as CheckpointInfo
from titanax.io._inspect import LeafInfo as LeafInfo
from titanax.io._inspect import inspect_checkpoint as inspect_checkpoint
from titanax.io._loader import ShardedLoader as ShardedLoader
from titanax.io._loader import default_collate as default_collate
from titanax.io._plot import plot_metrics as plot_metrics
from titanax.io._plot import read_metrics as read_metrics
from titanax.io._prefetch import DevicePrefetcher as DevicePrefetcher
from titanax.io._prefetch import prefetch_to_device as prefetch_to_device
from titanax.io._prefetch import to_global_arrays as to_global_arrays
from titanax.io._sinks import CSVSink as CSVSink
from titanax.io._sinks import JSONLSink as JSONLSink
from titanax.io._sinks import StdoutSink as StdoutSink
from titanax.io._tensorboard import TensorBoardSink as TensorBoardSink
from titanax.io._token_windows import TokenWindows as TokenWindows
from titanax.io._version import __version__ as __version__

__all__ = [
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
