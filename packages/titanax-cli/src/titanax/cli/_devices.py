"""Choosing the devices before JAX starts: real ones, or N simulated CPU devices.

JAX fixes its device set when its backend starts (the first ``jax.devices()`` or computation).
``--cpu-devices N`` (or ``run.cpu_devices: N``) therefore has to be applied before that: the
command sets ``jax_platforms="cpu"`` and ``jax_num_cpu_devices=N`` first, then builds anything.
Importing JAX does not start the backend, so this works after ``import jax`` too.
"""

from __future__ import annotations

import os

from titanax.cli._errors import CLIError

__all__ = ["configure_devices"]


def configure_devices(count: int | None) -> None:
    """Makes this process's JAX see ``count`` simulated CPU devices (``None``: leave JAX alone).

    Args:
      count: the number of CPU devices to simulate, or ``None`` for the devices JAX finds.

    Raises:
      CLIError: ``count`` is not positive (``0`` is handled by the caller: the devices JAX
        finds), or JAX already started with another device set (an
        embedding program ran JAX first) — the message says how to fix it.
    """
    if count is None:
        return
    if count < 1:
        raise CLIError(
            f"--cpu-devices {count}: the device count must be a non-negative int (N > 0: "
            "simulate N CPU devices; 0: use the devices JAX finds)."
        )
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["JAX_NUM_CPU_DEVICES"] = str(count)
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", count)
        jax.config.update("jax_platforms", "cpu")
    except RuntimeError:
        devices = jax.devices()
        if devices[0].platform != "cpu" or len(devices) != count:
            raise CLIError(
                f"cannot simulate {count} CPU devices: JAX already started in this process with "
                f"{len(devices)} {devices[0].platform} device(s). Run `titanax` in a fresh "
                "process, or drop --cpu-devices / run.cpu_devices (--cpu-devices 0) to use "
                "the devices JAX has."
            ) from None
