"""titanax.sharding: path-glob rules to PartitionSpecs, DP/FSDP/TP/PP plans validated before
compile, Megatron tensor-parallel rule presets and layers."""

from titanax.sharding import tp_layers as tp_layers
from titanax.sharding import tp_rules as tp_rules
from titanax.sharding._errors import ShardingError as ShardingError
from titanax.sharding._layout import Layout as Layout
from titanax.sharding._layout import LayoutRow as LayoutRow
from titanax.sharding._parallelisms import DP as DP
from titanax.sharding._parallelisms import FSDP as FSDP
from titanax.sharding._parallelisms import PP as PP
from titanax.sharding._parallelisms import TP as TP
from titanax.sharding._parallelisms import Schedule as Schedule
from titanax.sharding._paths import path_str as path_str
from titanax.sharding._paths import tree_paths as tree_paths
from titanax.sharding._placement import abstract_state as abstract_state
from titanax.sharding._placement import apply_named_sharding as apply_named_sharding
from titanax.sharding._placement import constrain as constrain
from titanax.sharding._placement import shard_batch_specs as shard_batch_specs
from titanax.sharding._plan import Plan as Plan
from titanax.sharding._rules import Rules as Rules
from titanax.sharding._rules import build_param_specs as build_param_specs
from titanax.sharding._rules import spec_for as spec_for
from titanax.sharding._specs import Indivisible as Indivisible
from titanax.sharding._specs import SpecLike as SpecLike
from titanax.sharding._version import __version__ as __version__

__all__ = [
    "DP",
    "FSDP",
    "PP",
    "TP",
    "Indivisible",
    "Layout",
    "LayoutRow",
    "Plan",
    "Rules",
    "Schedule",
    "ShardingError",
    "SpecLike",
    "__version__",
    "abstract_state",
    "apply_named_sharding",
    "build_param_specs",
    "constrain",
    "path_str",
    "shard_batch_specs",
    "spec_for",
    "tp_layers",
    "tp_rules",
    "tree_paths",
]
