"""Stopping a training loop cleanly on SIGINT (Ctrl-C) or SIGTERM (SLURM, Kubernetes).

During ``Engine.fit`` both signals only set a flag; the loop checks it between steps, saves a
checkpoint and stops. With several processes the decision must be the same everywhere (a process
that stops while the others wait in a collective would hang them), so the processes agree at log
points — every process checks at the same step — with one small all-gather of their flags. A
second signal while stopping falls back to the default behaviour (an immediate
``KeyboardInterrupt`` or termination), except within :attr:`StopRequest.GRACE_SECONDS` of the
first: one Ctrl-C often arrives twice (``timeout`` or a terminal signals the process group, and a
wrapper such as ``uv run`` forwards the same signal again), and that copy must not cancel the save.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import types
from typing import Any

import jax
import numpy as np

__all__ = ["StopRequest", "TrainingInterrupted"]

logger = logging.getLogger(__name__)


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
    # A repeat of a signal within this many seconds of the first is the same request delivered
    # twice (process-group signal + a forwarding wrapper), not a second Ctrl-C.
    GRACE_SECONDS = 1.0

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._first_at: float | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: types.FrameType | None) -> None:
        now = time.monotonic()
        if self._first_at is None:
            self.signal_name = signal.Signals(signum).name
            self._first_at = now
            return
        if now - self._first_at < self.GRACE_SECONDS:
            logger.info(
                "%s again %.3f s after the first: the same request, ignored",
                signal.Signals(signum).name,
                now - self._first_at,
            )
            return
        # A real second signal: behave as if we had never been installed.
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.__exit__()
        if callable(previous):
            previous(signum, frame)  # SIGINT: signal.default_int_handler raises KeyboardInterrupt
        elif previous != signal.SIG_IGN:
            os.kill(os.getpid(), signum)  # SIG_DFL: terminate as the signal would have

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
