"""``titanax launch``: N processes of one command on this machine, as one multi-process JAX run.

Each child gets the ``TITANAX_*`` variables that :func:`titanax.mesh.initialize_distributed`
reads (coordinator on a free loopback port, bound to 127.0.0.1 only, process count and index),
and optionally ``JAX_NUM_CPU_DEVICES`` so N processes × K simulated CPU devices form one mesh on a
laptop. Output lines are prefixed with the process index. Ctrl-C is forwarded to every child.
When a child fails, the others are stopped (SIGTERM, then SIGKILL after a grace period) and the
launcher exits non-zero naming it. Children run in their own process groups, so grandchildren
are stopped with them and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from titanax.mesh import ENV_VARS, TitanaxError

__all__ = ["LaunchError", "launch"]


class LaunchError(TitanaxError, ValueError):
    """``titanax launch`` was given bad arguments (no command, a non-positive count)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pump(stream: IO[str], prefix: str, out: IO[str], lock: threading.Lock) -> None:
    for line in iter(stream.readline, ""):
        with lock:
            out.write(f"{prefix}{line}" if line.endswith("\n") else f"{prefix}{line}\n")
            out.flush()
    stream.close()


def _signal_group(proc: subprocess.Popen[str], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def launch(
    command: Sequence[str],
    *,
    nproc: int,
    cpu_devices_per_proc: int | None = None,
    port: int | None = None,
    grace_seconds: float = 10.0,
    interrupt_grace_seconds: float = 300.0,
    init_timeout: int = 120,
    stdout: IO[str] | None = None,
) -> int:
    """Runs ``command`` as ``nproc`` processes of one JAX run on loopback; returns an exit code.

    Args:
      command: the program and its arguments (e.g. ``["titanax", "run", "tp", "--config", f]``).
      nproc: number of processes.
      cpu_devices_per_proc: simulated CPU devices per process (sets ``JAX_NUM_CPU_DEVICES`` and
        ``JAX_PLATFORMS=cpu``); ``None`` leaves the devices to JAX.
      port: coordinator port on 127.0.0.1 (default: a free one).
      grace_seconds: how long stopped children get between SIGTERM and SIGKILL after another
        child failed.
      interrupt_grace_seconds: after Ctrl-C, how long the children get to save a checkpoint and
        exit before SIGKILL (a second Ctrl-C kills at once).
      init_timeout: ``TITANAX_INIT_TIMEOUT`` seconds for the children's start-up.
      stdout: where prefixed output goes (default ``sys.stdout``).

    Returns:
      0 when every process exits 0; otherwise 1 after stopping the rest (130 after Ctrl-C).

    Raises:
      LaunchError: an empty command, ``nproc < 1``, ``cpu_devices_per_proc < 1``, a port
        outside 1..65535, or a command that cannot be started.
    """
    if not command:
        raise LaunchError("titanax launch: no command given; put it after '--'.")
    if nproc < 1:
        raise LaunchError(f"titanax launch: --nproc {nproc} must be at least 1.")
    if cpu_devices_per_proc is not None and cpu_devices_per_proc < 1:
        raise LaunchError(
            f"titanax launch: --cpu-devices-per-proc {cpu_devices_per_proc} must be at least 1."
        )
    if port is not None and not 1 <= port <= 65535:
        raise LaunchError(f"titanax launch: --port {port} is not a TCP port (1..65535).")
    executable = shutil.which(command[0])
    if executable is None:
        raise LaunchError(
            f"titanax launch: cannot start {command[0]!r}: no such program on PATH or file. "
            "Put the command after '--', e.g. titanax launch --nproc 2 -- titanax run tp -c f.yaml"
        )
    out = stdout or sys.stdout
    port = port or _free_port()
    address = f"127.0.0.1:{port}"
    lock = threading.Lock()
    procs: list[subprocess.Popen[str]] = []
    pumps: list[threading.Thread] = []

    def say(message: str) -> None:
        with lock:
            out.write(f"[launch] {message}\n")
            out.flush()

    for index in range(nproc):
        env = dict(os.environ)
        env.update(
            {
                ENV_VARS["coordinator_address"]: address,
                ENV_VARS["coordinator_bind_address"]: address,
                ENV_VARS["num_processes"]: str(nproc),
                ENV_VARS["process_id"]: str(index),
                ENV_VARS["initialization_timeout"]: str(init_timeout),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if cpu_devices_per_proc is not None:
            env["JAX_NUM_CPU_DEVICES"] = str(cpu_devices_per_proc)
            env["JAX_PLATFORMS"] = "cpu"
        proc = subprocess.Popen(
            list(command),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        procs.append(proc)
        say(f"process {index} pid {proc.pid}: {' '.join(command)}")
        assert proc.stdout is not None
        thread = threading.Thread(
            target=_pump, args=(proc.stdout, f"[p{index}] ", out, lock), daemon=True
        )
        thread.start()
        pumps.append(thread)

    def stop_all(first: int, grace: float) -> None:
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc, first)
        deadline = time.monotonic() + grace
        while (
            time.monotonic() < deadline and interrupts < 2 and any(p.poll() is None for p in procs)
        ):
            time.sleep(0.1)
        for proc in procs:
            _signal_group(proc, signal.SIGKILL)  # also reaps stray grandchildren
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    interrupts = 0

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal interrupts
        interrupts += 1

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        while True:
            if interrupts:
                say(
                    "Ctrl-C: forwarding SIGINT to every process (they save and stop; "
                    "Ctrl-C again to kill them now)"
                )
                stop_all(signal.SIGINT, interrupt_grace_seconds)
                return 130
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                index, code = failed[0]
                say(f"process {index} {_describe_exit(code)}; stopping the others")
                stop_all(signal.SIGTERM, grace_seconds)
                say(f"failed: process {index} {_describe_exit(code)}")
                return 1
            if all(c == 0 for c in codes):
                say(f"all {nproc} processes finished")
                return 0
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGINT, previous)
        for thread in pumps:
            thread.join(timeout=2)
