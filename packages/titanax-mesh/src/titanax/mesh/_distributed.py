"""Multi-process start-up on JAX's multi-controller runtime (``jax.distributed``).

One Python process per host (or per accelerator) runs the same program; after
:func:`initialize_distributed` every process sees the global device set and a mesh can span all
of them. The coordinates of the run come from explicit arguments, from ``TITANAX_*`` environment
variables (set by ``titanax launch``), or from JAX's own cluster detection (SLURM, Open MPI,
Kubernetes, Cloud TPU).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import jax

from titanax.mesh._errors import DistributedError, MeshError
from titanax.mesh._mesh import MeshSpec
from titanax.mesh._process import ProcessInfo, process_info

__all__ = ["ENV_VARS", "initialize_distributed"]

logger = logging.getLogger("titanax.mesh")

ENV_VARS = {
    "coordinator_address": "TITANAX_COORDINATOR_ADDRESS",
    "num_processes": "TITANAX_NUM_PROCESSES",
    "process_id": "TITANAX_PROCESS_ID",
    "local_device_ids": "TITANAX_LOCAL_DEVICE_IDS",
    "coordinator_bind_address": "TITANAX_COORDINATOR_BIND_ADDRESS",
    "initialization_timeout": "TITANAX_INIT_TIMEOUT",
}
"""Environment variables read when the matching argument is not given."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(
            f"initialize_distributed: environment variable {name}={value!r} is not an integer."
        ) from None


def _diagnose(info: ProcessInfo, mesh: MeshSpec | None, platform: str | None) -> list[str]:
    problems = []
    if platform is not None and info.platform != platform:
        hint = (
            "JAX found no accelerator: install the matching jaxlib (e.g. 'pip install "
            "jax[cuda12]') and check that the devices are visible to every process"
            if info.platform == "cpu"
            else f"set JAX_PLATFORMS={platform} or fix the config's platform"
        )
        problems.append(f"platform is {info.platform!r}, the config expects {platform!r}: {hint}.")
    if mesh is not None:
        try:
            mesh.resolved_shape(info.global_device_count)
        except MeshError as err:
            per_process = info.local_device_count
            advice = (
                " Each process sees a single device, as under SLURM with one GPU per task: "
                "either launch one task per device for all of them (the global count grows) or "
                "one task per host with every local GPU visible (--gpus-per-task)."
                if per_process == 1 and info.process_count > 1
                else ""
            )
            problems.append(
                f"{info.process_count} process(es) × {per_process} local device(s) = "
                f"{info.global_device_count} devices do not fit the mesh: {err}{advice}"
            )
    return problems


def initialize_distributed(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    initialization_timeout: int | None = None,
    coordinator_bind_address: str | None = None,
    expected_global_devices: int | None = None,
    mesh: MeshSpec | None = None,
    platform: str | None = None,
    cpu_collectives: str = "gloo",
) -> ProcessInfo:
    """Joins this process to a multi-process JAX run and checks the result.

    Coordinates, in order of precedence: the arguments; the ``TITANAX_*`` variables of
    :data:`ENV_VARS` (what ``titanax launch`` sets); JAX's cluster autodetection (SLURM,
    Open MPI, Kubernetes, Cloud TPU) when none is given. On the CPU backend the cross-process
    collectives implementation is set to ``cpu_collectives`` (gloo) before start-up. Must run
    before anything initializes the JAX backend (``jax.devices()``, any computation,
    ``MeshSpec.build()``) — otherwise the process would silently run alone.

    Args:
      coordinator_address: ``"host:port"`` of process 0's coordinator service.
      num_processes: total number of processes.
      process_id: this process's index in ``[0, num_processes)``.
      local_device_ids: restrict this process to these local devices (e.g. one GPU each).
      initialization_timeout: seconds to wait for every process to connect (default 300).
      coordinator_bind_address: address the coordinator listens on (``"127.0.0.1:PORT"`` for
        loopback runs, so it does not listen on every interface).
      expected_global_devices: the global device count must equal this.
      mesh: the run's mesh; its shape must fit the global device count.
      platform: ``"cpu"``, ``"gpu"`` or ``"tpu"``: the backend the run must get.
      cpu_collectives: ``jax_cpu_collectives_implementation`` for CPU runs (``"gloo"``).

    Returns:
      :class:`ProcessInfo` after start-up.

    Raises:
      DistributedError: the backend was already initialized; only some of the three
        coordinates were given; ``process_id`` out of range; a malformed ``TITANAX_*`` variable;
        no cluster detected; start-up failed or timed out; or the devices found do not fit
        ``expected_global_devices``, ``mesh`` or ``platform`` — with a diagnosis.

    References:
      ``jax.distributed.initialize``; JAX's multi-process guide.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_VARS["coordinator_address"])
    if num_processes is None:
        num_processes = _env_int(ENV_VARS["num_processes"])
    if process_id is None:
        process_id = _env_int(ENV_VARS["process_id"])
    if local_device_ids is None and os.environ.get(ENV_VARS["local_device_ids"]):
        raw = os.environ[ENV_VARS["local_device_ids"]]
        try:
            local_device_ids = [int(v) for v in raw.split(",")]
        except ValueError:
            raise DistributedError(
                f"initialize_distributed: {ENV_VARS['local_device_ids']}={raw!r} must be a "
                "comma-separated list of ints, e.g. '0,1'."
            ) from None
    coordinator_bind_address = coordinator_bind_address or os.environ.get(
        ENV_VARS["coordinator_bind_address"]
    )
    if initialization_timeout is None:
        initialization_timeout = _env_int(ENV_VARS["initialization_timeout"]) or 300
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit) and any(v is None for v in explicit):
        raise DistributedError(
            "initialize_distributed: pass all of coordinator_address, num_processes and "
            f"process_id (or the {', '.join(list(ENV_VARS.values())[:3])} variables), or none "
            f"of them for cluster autodetection; got coordinator_address="
            f"{coordinator_address!r}, num_processes={num_processes!r}, "
            f"process_id={process_id!r}."
        )
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise DistributedError(
            f"initialize_distributed: process_id={process_id} is outside [0, {num_processes}) "
            f"for num_processes={num_processes}."
        )
    if cpu_collectives:
        try:
            jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
        except (AttributeError, ValueError) as err:
            raise DistributedError(
                f"initialize_distributed: cpu_collectives={cpu_collectives!r} is not supported "
                f"by this jax ({err})."
            ) from err
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
            f"{num_processes} processes, process_id {process_id} (timeout "
            f"{initialization_timeout} s): {text}"
        ) from err
    except ValueError as err:
        raise DistributedError(
            "initialize_distributed: no cluster was detected and no coordinator was given "
            f"({err}). Pass coordinator_address, num_processes and process_id, set "
            f"{ENV_VARS['coordinator_address']} and friends, or start through 'titanax launch'."
        ) from err
    info = process_info()
    logger.info(
        "process %d/%d up: %d local, %d global %s devices",
        info.process_index, info.process_count, info.local_device_count,
        info.global_device_count, info.platform,
    )  # fmt: skip
    problems = _diagnose(info, mesh, platform)
    if expected_global_devices is not None and info.global_device_count != expected_global_devices:
        problems.insert(
            0,
            f"{info.process_count} processes see {info.global_device_count} {info.platform} "
            f"devices in all ({info.local_device_count} on this process), but "
            f"{expected_global_devices} were expected. Check the number of processes and the "
            "devices each one sees.",
        )
    if problems:
        raise DistributedError("initialize_distributed: " + " ".join(problems))
    return info
