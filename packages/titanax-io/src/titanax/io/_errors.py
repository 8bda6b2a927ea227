"""The errors of ``titanax.io``.

Each derives from :class:`titanax.mesh.TitanaxError` and from the built-in exception a caller
would naturally catch: ``ValueError`` for a checkpoint, dataset or metric that does not fit,
``TypeError`` for a metric value of the wrong kind, ``RuntimeError`` for a save that failed in
the background.
"""

from __future__ import annotations

from titanax.mesh import TitanaxError

__all__ = [
    "CheckpointError",
    "CheckpointSaveError",
    "DataError",
    "MetricTypeError",
    "SinkError",
]


class CheckpointError(TitanaxError, ValueError):
    """A checkpoint cannot be saved or restored as asked.

    Raised for a step that does not exist or already exists, a target tree that does not match
    the saved tree (missing or unexpected paths, shape or dtype changes — all listed in one
    message), a target leaf without a sharding, metadata that is not JSON, partial-restore globs
    that match nothing, and an incompatible checkpoint (optimizer or parameter shapes changed).
    """


class CheckpointSaveError(TitanaxError, RuntimeError):
    """A checkpoint save failed, possibly in the background.

    Asynchronous saves finish in a background thread; their error is raised by the next
    ``save``, ``wait`` or ``close`` of the same checkpointer, chained (``__cause__``) to the
    original exception. The failed step is never listed as complete.
    """


class DataError(TitanaxError, ValueError):
    """A dataset or loader option does not fit.

    Raised for a global batch size that does not divide over the processes, a dataset smaller
    than one batch, a position outside the sample stream, columns of different lengths, and
    padded batches (``drop_last=False``) whose samples are not dicts.
    """


class SinkError(TitanaxError, ValueError):
    """A metric sink cannot write what it was given.

    Raised for a metric name that is not a string, a new metric name after a CSV file fixed its
    columns, a write after ``close``, and a run directory without metrics to plot.
    """


class MetricTypeError(TitanaxError, TypeError):
    """A metric value is not a host number.

    Sinks accept Python or NumPy scalars only. A ``jax.Array`` would force a device-to-host
    transfer per metric per step; fetch all metrics at once with ``jax.device_get`` (the Engine
    does) and pass the resulting floats.
    """
