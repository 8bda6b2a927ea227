"""titanax.exec: TrainState, precision, step functions, the compiled SPMD step and the Engine."""

from titanax.exec._compiler import CompiledStep as CompiledStep
from titanax.exec._engine import Engine as Engine
from titanax.exec._errors import ExecError as ExecError
from titanax.exec._errors import NonFiniteError as NonFiniteError
from titanax.exec._errors import RecompileError as RecompileError
from titanax.exec._errors import StateError as StateError
from titanax.exec._hlo import Collective as Collective
from titanax.exec._hlo import CompileReport as CompileReport
from titanax.exec._hlo import parse_collectives as parse_collectives
from titanax.exec._precision import LossScale as LossScale
from titanax.exec._precision import Precision as Precision
from titanax.exec._protocols import CheckpointStore as CheckpointStore
from titanax.exec._protocols import MetricSink as MetricSink
from titanax.exec._protocols import ResumableData as ResumableData
from titanax.exec._remat import RematPolicy as RematPolicy
from titanax.exec._remat import checkpoint_policy as checkpoint_policy
from titanax.exec._remat import remat as remat
from titanax.exec._saveable import from_saveable as from_saveable
from titanax.exec._saveable import optimizer_fingerprint as optimizer_fingerprint
from titanax.exec._saveable import to_saveable as to_saveable
from titanax.exec._signals import TrainingInterrupted as TrainingInterrupted
from titanax.exec._state import StepContext as StepContext
from titanax.exec._state import TrainState as TrainState
from titanax.exec._step import StepFunction as StepFunction
from titanax.exec._step import step_fn as step_fn
from titanax.exec._throughput import PEAK_BF16_FLOPS as PEAK_BF16_FLOPS
from titanax.exec._throughput import peak_flops_per_device as peak_flops_per_device
from titanax.exec._verify import TOLERANCES as TOLERANCES
from titanax.exec._verify import StepComparison as StepComparison
from titanax.exec._verify import VerifyReport as VerifyReport
from titanax.exec._verify import verify_layout as verify_layout
from titanax.exec._version import __version__ as __version__

__all__ = [
    "PEAK_BF16_FLOPS",
    "TOLERANCES",
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
    "StepComparison",
    "StepContext",
    "StepFunction",
    "TrainState",
    "TrainingInterrupted",
    "VerifyReport",
    "__version__",
    "checkpoint_policy",
    "from_saveable",
    "optimizer_fingerprint",
    "parse_collectives",
    "peak_flops_per_device",
    "remat",
    "step_fn",
    "to_saveable",
    "verify_layout",
]
