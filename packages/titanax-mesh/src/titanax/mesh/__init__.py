"""titanax.mesh: device meshes, checked collectives, process facts and multi-host start-up."""

from titanax.mesh import collectives as collectives
from titanax.mesh._distributed import ENV_VARS as ENV_VARS
from titanax.mesh._distributed import initialize_distributed as initialize_distributed
from titanax.mesh._errors import CollectiveError as CollectiveError
from titanax.mesh._errors import DistributedError as DistributedError
from titanax.mesh._errors import MeshError as MeshError
from titanax.mesh._errors import TitanaxError as TitanaxError
from titanax.mesh._mesh import AxisTypeName as AxisTypeName
from titanax.mesh._mesh import MeshSpec as MeshSpec
from titanax.mesh._process import ProcessInfo as ProcessInfo
from titanax.mesh._process import global_device_count as global_device_count
from titanax.mesh._process import host_id as host_id
from titanax.mesh._process import local_device_count as local_device_count
from titanax.mesh._process import process_count as process_count
from titanax.mesh._process import process_index as process_index
from titanax.mesh._process import process_info as process_info
from titanax.mesh._version import __version__ as __version__

__all__ = [
    "ENV_VARS",
    "AxisTypeName",
    "CollectiveError",
    "DistributedError",
    "MeshError",
    "MeshSpec",
    "ProcessInfo",
    "TitanaxError",
    "__version__",
    "collectives",
    "global_device_count",
    "host_id",
    "initialize_distributed",
    "local_device_count",
    "process_count",
    "process_index",
    "process_info",
]
