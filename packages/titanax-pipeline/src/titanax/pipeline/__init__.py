"""titanax.pipeline: GPipe, 1F1B and interleaved 1F1B schedules compiled into one SPMD step."""

from titanax.pipeline._errors import PipelineError as PipelineError
from titanax.pipeline._executor import PipelineOutput as PipelineOutput
from titanax.pipeline._executor import make_pipeline as make_pipeline
from titanax.pipeline._layers import layer_permutation as layer_permutation
from titanax.pipeline._layers import to_natural_order as to_natural_order
from titanax.pipeline._layers import to_storage_order as to_storage_order
from titanax.pipeline._plot import plot_schedule as plot_schedule
from titanax.pipeline._reference import reference_pipeline as reference_pipeline
from titanax.pipeline._schedule import Arrival as Arrival
from titanax.pipeline._schedule import Op as Op
from titanax.pipeline._schedule import Schedule as Schedule
from titanax.pipeline._schedule import ScheduleKind as ScheduleKind
from titanax.pipeline._schedule import build_schedule as build_schedule
from titanax.pipeline._value_and_grad import pipeline_value_and_grad as pipeline_value_and_grad
from titanax.pipeline._version import __version__ as __version__

__all__ = [
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
