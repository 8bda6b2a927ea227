"""Facts about this process and the devices it sees, and multi-process start-up.

Titanax runs on JAX's multi-controller runtime: one Python process per host (or per GPU), each
seeing its local devices, all together forming the global device set after
``jax.distributed.initialize``. This module reads those facts and wraps the start-up call.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Sequence

import jax

from titanax.mesh._errors import DistributedError

__all__ = [
    "ProcessInfo",
    "global_device_count",
    "host_id",
    "initialize_distributed",
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


def initialize_distributed(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    initialization_timeout: int = 300,
    coordinator_bind_address: str | None = None,
    expected_global_devices: int | None = None,
) -> ProcessInfo:
    """Joins this process to a multi-process JAX run (``jax.distributed.initialize``).

    Either pass ``coordinator_address``, ``num_processes`` and ``process_id`` explicitly, or pass
    none of them and let JAX detect the cluster (SLURM, Open MPI, Kubernetes/GKE, Cloud TPU).
    Must be called before anything initializes the JAX backend (``jax.devices()``, any
    computation, ``MeshSpec.build()``).

    Args:
      coordinator_address: ``"host:port"`` of process 0's coordinator service.
      num_processes: total number of processes.
      process_id: this process's index in ``[0, num_processes)``.
      local_device_ids: restrict this process to these local devices (e.g. one GPU each).
      initialization_timeout: seconds to wait for all processes to connect.
      coordinator_bind_address: address the coordinator listens on (pass ``"127.0.0.1:PORT"``
        for loopback runs so it does not listen on every interface).
      expected_global_devices: when given, the global device count after start-up must equal it.

    Returns:
      :class:`ProcessInfo` after start-up.

    Raises:
      DistributedError: the backend was already initialized, only some of the three explicit
        arguments were given, ``process_id`` is out of range, start-up failed or timed out, or
        the global device count differs from ``expected_global_devices``.

    References:
      ``jax.distributed.initialize``; JAX multi-process documentation.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit) and any(v is None for v in explicit):
        raise DistributedError(
            "initialize_distributed: pass all of coordinator_address, num_processes and "
            f"process_id, or none of them for cluster autodetection; got "
            f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
            f"process_id={process_id!r}."
        )
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise DistributedError(
            f"initialize_distributed: process_id={process_id} is outside [0, {num_processes}) "
            f"for num_processes={num_processes}."
        )
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=None if local_device_ids is None else list(local_device_ids),
            initialization_timeout=initialization_timeout,
            coordinator_bind_address=coordinator_bind_address,
        )
    except RuntimeError as err:
        text = str(err)
        if "must be called before" in text:
            raise DistributedError(
                "initialize_distributed: the JAX backend is already initialized in this "
                "process (something called jax.devices(), built a mesh, or ran a computation "
                "first), so it would run as a silent single-process job. Call "
                "initialize_distributed() first thing in the program."
            ) from err
        if "already" in text:
            raise DistributedError(
                f"initialize_distributed: jax.distributed is already initialized ({text})."
            ) from err
        raise DistributedError(
            f"initialize_distributed: start-up failed with coordinator {coordinator_address!r}, "
            f"{num_processes} processes, process_id {process_id}: {text}"
        ) from err
    except ValueError as err:
        raise DistributedError(
            "initialize_distributed: no cluster was detected and no explicit coordinator was "
            f"given ({err}). Pass coordinator_address, num_processes and process_id."
        ) from err
    info = process_info()
    if expected_global_devices is not None and info.global_device_count != expected_global_devices:
        raise DistributedError(
            f"initialize_distributed: {info.process_count} processes see "
            f"{info.global_device_count} {info.platform} devices in all "
            f"({info.local_device_count} on this process), but {expected_global_devices} were "
            "expected. Check the number of processes and the devices each one sees."
        )
    return info
