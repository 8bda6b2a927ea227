"""The protocols through which the Engine talks to checkpoint stores, metric sinks and data.

``titanax-exec`` defines them and never imports an implementation; ``titanax-io`` implements
them (``OrbaxCheckpointer``, ``CSVSink``, ``ShardedLoader`` ...), and users may bring their own.
They are structural (``typing.Protocol``): any object with these methods fits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["CheckpointStore", "MetricSink", "ResumableData"]


@runtime_checkable
class MetricSink(Protocol):
    """Receives host-side metrics (plain Python floats) at log points.

    The Engine fetches metrics from the device in one transfer every ``log_every`` steps and
    calls ``write`` on every process; a sink writes only on process 0 (``jax.process_index()``).
    """

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Records ``metrics`` (name -> float, e.g. ``{"loss": 2.31, "tokens_per_s": 1.2e4}``)
        for training step ``step`` (the number of optimizer updates applied so far)."""
        ...

    def close(self) -> None:
        """Flushes and releases files; further writes are errors."""
        ...


@runtime_checkable
class CheckpointStore(Protocol):
    """Saves and restores training state (a pytree of ``jax.Array``) with JSON metadata.

    Saves may be asynchronous; an error of a background save must surface at the next
    ``save``, ``wait`` or ``close``. Only complete (committed) steps are ever listed or restored.
    """

    def save(self, step: int, state: Any, *, metadata: Mapping[str, Any]) -> None:
        """Starts saving ``state`` as ``step`` with JSON-safe ``metadata`` (mesh, plan, data
        position, ...). Returns once the arrays are safe to donate/overwrite."""
        ...

    def restore(self, step: int | None, target: Any) -> tuple[Any, dict[str, Any]]:
        """Restores ``step`` (the latest complete one when ``None``) into ``target``.

        ``target`` is a pytree of ``jax.ShapeDtypeStruct`` whose ``sharding`` is the layout the
        arrays must have after loading (the current mesh and plan), so loading reshards.

        Returns:
          ``(state, metadata)``.
        """
        ...

    def latest_step(self) -> int | None:
        """The newest complete step, or ``None`` when there is none."""
        ...

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        """The JSON metadata saved with ``step`` (the latest complete one when ``None``), read
        without loading any array — the Engine checks it before restoring."""
        ...

    def wait(self) -> None:
        """Blocks until pending saves finished; raises the error of a failed one."""
        ...

    def close(self) -> None:
        """Waits for pending saves and releases resources."""
        ...


@runtime_checkable
class ResumableData(Protocol):
    """A data source whose position is saved with checkpoints.

    ``position`` is a global sample index (independent of the number of data-parallel devices
    or processes), so a run can resume with another layout at the same sample.
    """

    @property
    def position(self) -> int:
        """Global index of the next sample to be read."""
        ...

    def seek(self, position: int) -> None:
        """Continues reading at global sample index ``position``."""
        ...
