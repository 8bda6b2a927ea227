"""``prefetch_to_device``: build the next global batches on the devices while a step runs."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import jax
import numpy as np

from titanax.io._errors import DataError

__all__ = ["DevicePrefetcher", "prefetch_to_device", "to_global_arrays"]

_END = object()


class _Failure:
    __slots__ = ("error", "stage")

    def __init__(self, error: BaseException, stage: str) -> None:
        self.error = error
        self.stage = stage


def to_global_arrays(local_batch: Any, shardings: Any) -> Any:
    """Turns this process's slice of a batch into global ``jax.Array`` s.

    Each leaf goes through ``jax.make_array_from_process_local_data(sharding, leaf)``: with one
    process the leaf is the whole batch; with several, the global shape is the local one times
    the number of processes along the sharded dimension.

    Args:
      local_batch: pytree of NumPy arrays, ``[local_batch, ...]`` each.
      shardings: one ``jax.sharding.Sharding`` for every leaf (e.g.
        ``NamedSharding(mesh, P("data"))``), or a pytree of them with the batch's structure.

    Returns:
      The batch as global ``jax.Array`` s with those shardings.

    Raises:
      DataError: ``shardings`` is neither a Sharding nor a tree of them matching the batch.
    """
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(shardings, x), local_batch
        )
    try:
        return jax.tree.map(
            lambda x, s: jax.make_array_from_process_local_data(s, x), local_batch, shardings
        )
    except ValueError as err:
        if "structure" not in str(err) and "Custom node" not in str(err):
            raise
        raise DataError(
            "prefetch_to_device: sharding_fn must return one jax.sharding.Sharding or a tree of "
            f"them with the batch's structure {jax.tree.structure(local_batch)}; got "
            f"{jax.tree.structure(shardings)}."
        ) from err


class DevicePrefetcher:
    """An iterator of device batches, filled ``size`` batches ahead by a background thread.

    Returned by :func:`prefetch_to_device`. When the source has a ``position`` (a
    :class:`ShardedLoader`), ``position`` here is the source position *after the last batch
    handed out* — not the source's own, which runs ahead — so it is what a checkpoint must
    save. :meth:`seek` drops the prefetched batches and restarts the source at a position.

    An exception in the background thread (a bad sample, a failed transfer) is raised by the
    ``next()`` that would have returned that batch, as a :class:`~titanax.io.DataError` naming
    the batch and the stage (reading the source, ``sharding_fn``, the transfer) whose
    ``__cause__`` is the original exception, with its traceback from the thread; after it the
    iterator is exhausted. Call :meth:`close` (or use ``with``) to stop the thread early.
    """

    def __init__(
        self, iterator: Iterator[Any], size: int, sharding_fn: Callable[[Any], Any]
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise DataError(
                f"prefetch_to_device: size={size!r} must be a positive int (the number of "
                "batches kept ready on the devices; 2 is usually enough)."
            )
        if not callable(sharding_fn) and not isinstance(sharding_fn, jax.sharding.Sharding):
            raise DataError(
                "prefetch_to_device: sharding_fn must be a callable batch -> sharding(s) or a "
                f"jax.sharding.Sharding, got {type(sharding_fn).__name__}."
            )
        try:
            self._source = iter(iterator)
        except TypeError as err:
            raise DataError(
                "prefetch_to_device: iterator must be an iterable of batches (e.g. a "
                f"ShardedLoader or a generator), got {type(iterator).__name__}."
            ) from err
        self._size = int(size)
        self._handed = 0  # batches returned by next()
        self._sharding_fn = sharding_fn
        self._position: int | None = self._source_position()
        self._done = False
        self._closed = False
        self._start()

    def _source_position(self) -> int | None:
        position = getattr(self._source, "position", None)
        return int(position) if isinstance(position, int) else None

    def _start(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self._size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="titanax-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        stage = "reading the source iterator"
        try:
            while not self._stop.is_set():
                stage = "reading the source iterator"
                try:
                    batch = next(self._source)
                except StopIteration:
                    self._put(_END)
                    return
                position = self._source_position()
                fn = self._sharding_fn
                stage = "calling sharding_fn"
                shardings = fn if isinstance(fn, jax.sharding.Sharding) else fn(batch)
                stage = "copying the batch to the devices"
                arrays = to_global_arrays(batch, shardings)
                if not self._put((arrays, position)):
                    return
        except BaseException as err:  # re-raised in the consumer's next()
            self._put(_Failure(err, stage))

    def _halt(self) -> None:
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    @property
    def position(self) -> int:
        """Source position after the last batch returned by ``next()``.

        Raises:
          DataError: the source iterator has no ``position``.
        """
        if self._position is None:
            raise DataError(
                "DevicePrefetcher.position: the source iterator has no 'position'; wrap a "
                "ShardedLoader (or any iterator with position/seek) to resume data."
            )
        return self._position

    def seek(self, position: int) -> None:
        """Drops prefetched batches and continues the source at ``position``.

        Raises:
          DataError: the source has no ``seek``, or the prefetcher is closed.
        """
        seek = getattr(self._source, "seek", None)
        if seek is None:
            raise DataError("DevicePrefetcher.seek: the source iterator has no 'seek'.")
        if self._closed:
            raise DataError("DevicePrefetcher.seek: the prefetcher is closed.")
        self._halt()
        seek(position)
        self._position = self._source_position()
        self._done = False
        self._start()

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> Any:
        if self._done or self._closed:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            err = item.error
            if isinstance(err, DataError) or not isinstance(err, Exception):
                raise err  # already ours, or KeyboardInterrupt / SystemExit: as they are
            raise DataError(
                f"prefetch_to_device: batch {self._handed} failed in the prefetch thread while "
                f"{item.stage}: {type(err).__name__}: {err}. The original exception (with its "
                "traceback) is chained as __cause__; fix the data or the function that raised "
                "it. This prefetcher is exhausted now: seek() or create a new one to continue."
            ) from err
        arrays, position = item
        if position is not None:
            self._position = position
        self._handed += 1
        return arrays

    def close(self) -> None:
        """Stops the background thread and drops prefetched batches; idempotent."""
        if not self._closed:
            self._closed = True
            self._halt()

    def __enter__(self) -> DevicePrefetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def prefetch_to_device(
    iterator: Iterator[Any],
    size: int,
    sharding_fn: Callable[[Any], Any],
) -> DevicePrefetcher:
    """Prefetches ``size`` global device batches from ``iterator`` in a background thread.

    While the current step runs, the thread reads the next local batches (NumPy) and makes
    them global ``jax.Array`` s with ``jax.make_array_from_process_local_data`` — so the host
    read and the host-to-device copy overlap with compute.

    Args:
      iterator: yields this process's slice of each batch (e.g. a :class:`ShardedLoader`).
      size: batches to keep ready (2 is usually enough).
      sharding_fn: ``local_batch -> sharding(s)``: one ``jax.sharding.Sharding`` for every leaf
        or a pytree of them matching the batch (e.g. ``lambda b: NamedSharding(mesh,
        P("data"))``). A ``Sharding`` may be passed directly.

    Returns:
      A :class:`DevicePrefetcher` (an iterator with ``position``/``seek`` when the source has
      them, and ``close``).

    Raises:
      DataError: ``size`` is not a positive int, ``iterator`` is not iterable, or
        ``sharding_fn`` is not callable; at ``next()``, an exception of the background
        thread (the original as ``__cause__``).

    Example:
      >>> import numpy as np
      >>> from jax.sharding import NamedSharding, PartitionSpec as P
      >>> from titanax.io import ShardedLoader
      >>> mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> loader = ShardedLoader({"x": np.zeros((64, 4))}, global_batch_size=16, seed=0)
      >>> with prefetch_to_device(loader, 2, NamedSharding(mesh, P("data"))) as batches:
      ...     batch = next(batches)
      >>> batch["x"].sharding.spec, batch["x"].shape, batches.position
      (P('data',), (16, 4), 16)
    """
    return DevicePrefetcher(iterator, size, sharding_fn)
