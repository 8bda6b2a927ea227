"""Stopping a training loop cleanly on SIGINT (Ctrl-C) or SIGTERM (SLURM, Kubernetes).

During ``Engine.fit`` both signals only set a flag; the loop checks it between steps, saves a
checkpoint and stops. With several processes the decision must be the same everywhere (a process
that stops while the others wait in a collective would hang them), so the processes agree at log
points — every process checks at the same step — with one small all-gather of their flags. A
second signal while stopping falls back to the default behaviour (an immediate
``KeyboardInterrupt`` or termination).
"""

from __future__ import annotations

import signal
import threading
import types
from typing import Any

import jax
import numpy as np

__all__ = ["StopRequest", "TrainingInterrupted"]


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``Engine.fit`` after it saved and stopped on SIGINT or SIGTERM.

    A ``KeyboardInterrupt`` so that code (and the CLI) treating Ctrl-C keeps working;
    ``signal_name`` tells which signal it was and ``step`` where training stopped.
    """

    def __init__(self, signal_name: str, step: int) -> None:
        super().__init__(f"training stopped by {signal_name} at step {step}")
        self.signal_name = signal_name
        self.step = step


class StopRequest:
    """Context manager: while active, SIGINT and SIGTERM request a stop instead of killing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: types.FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        for sig, previous in self._previous.items():  # a second signal is not caught again
            signal.signal(sig, previous)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def requested(self, *, at_log_point: bool) -> bool:
        """Whether to stop now. One process: as soon as a signal arrived. Several: only at log
        points, where every process takes part in one all-gather of the flags."""
        if jax.process_count() == 1:
            return self.signal_name is not None
        if not at_log_point:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(
            np.asarray([0 if self.signal_name is None else 1], np.int32)
        )
        if np.any(flags) and self.signal_name is None:
            self.signal_name = "a signal to another process"
        return bool(np.any(flags))
