"""Facts about this process and the devices it sees, and multi-process start-up.

Titanax runs on JAX's multi-controller runtime: one Python process per host (or per GPU), each
seeing its local devices, all together forming the global device set after
``jax.distributed.initialize``. This module reads those facts and wraps the start-up call.
"""

from __future__ import annotations

import dataclasses
import socket

import jax

__all__ = [
    "ProcessInfo",
    "global_device_count",
    "host_id",
    "local_device_count",
    "process_count",
    "process_index",
    "process_info",
]


def process_index() -> int:
    """Index of this process in ``[0, process_count())`` (``jax.process_index()``)."""
    return int(jax.process_index())


def process_count() -> int:
    """Number of processes in the run (``jax.process_count()``); 1 without multi-process."""
    return int(jax.process_count())


def local_device_count() -> int:
    """Devices addressable by this process (``jax.local_device_count()``)."""
    return int(jax.local_device_count())


def global_device_count() -> int:
    """Devices of all processes together (``jax.device_count()``)."""
    return int(jax.device_count())


def host_id() -> str:
    """The network name of the machine this process runs on (``socket.gethostname()``).

    Several processes can share a host (one per GPU); ``process_index`` tells them apart.
    """
    return socket.gethostname()


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ProcessInfo:
    """A snapshot of this process's place in the run.

    Attributes:
      process_index: this process, in ``[0, process_count)``.
      process_count: processes in the run.
      local_device_count: devices this process addresses.
      global_device_count: devices of all processes.
      platform: ``"cpu"``, ``"gpu"`` or ``"tpu"`` (of the default backend).
      device_kind: e.g. ``"cpu"``, ``"NVIDIA H100 80GB HBM3"``.
      host: this machine's host name.
    """

    process_index: int
    process_count: int
    local_device_count: int
    global_device_count: int
    platform: str
    device_kind: str
    host: str


def process_info() -> ProcessInfo:
    """Returns a :class:`ProcessInfo` for this process (initializes the JAX backend)."""
    device = jax.local_devices()[0]
    return ProcessInfo(
        process_index=process_index(),
        process_count=process_count(),
        local_device_count=local_device_count(),
        global_device_count=global_device_count(),
        platform=str(device.platform),
        device_kind=str(device.device_kind),
        host=host_id(),
    )
