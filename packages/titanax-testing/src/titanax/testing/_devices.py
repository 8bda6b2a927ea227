"""Simulated CPU devices for tests: in this process, and in a subprocess with another count."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Mapping

import jax

__all__ = ["free_port", "run_with_devices", "use_cpu_devices"]


def use_cpu_devices(count: int) -> None:
    """Makes this process's JAX CPU backend expose ``count`` devices.

    Must run before JAX initializes its backend (``jax.devices()``, any computation).

    Raises:
      RuntimeError: the backend already started with another device count.
    """
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:
        have = len(jax.devices("cpu"))
        if have != count:
            raise RuntimeError(
                f"use_cpu_devices({count}): the JAX backend already started with {have} CPU "
                "devices; call this before any JAX operation (e.g. in a pytest plugin)."
            ) from None


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_with_devices(
    code: str,
    *,
    num_devices: int,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Runs Python ``code`` in a fresh interpreter that sees ``num_devices`` CPU devices.

    Use for tests that need another device count than the test process (which is fixed once JAX
    starts) or that may abort the process.

    Args:
      code: Python source; dedented before it runs.
      num_devices: simulated CPU devices (``JAX_NUM_CPU_DEVICES``).
      timeout: seconds before the child is killed (``subprocess.TimeoutExpired``).
      env: extra environment variables.
      check: raise when the child exits non-zero.

    Returns:
      The completed process, with text ``stdout`` and ``stderr``.

    Raises:
      AssertionError: ``check`` and a non-zero exit; the message holds the child's output.
      subprocess.TimeoutExpired: the child ran past ``timeout``.
    """
    child_env = dict(os.environ)
    child_env.update({"JAX_NUM_CPU_DEVICES": str(num_devices), "JAX_PLATFORMS": "cpu"})
    child_env.update(env or {})
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"subprocess with {num_devices} devices exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
        )
    return result
