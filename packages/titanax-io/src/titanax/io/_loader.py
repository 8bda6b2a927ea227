"""``ShardedLoader``: globally shuffled batches, each process reading only its slice.

The samples of a dataset form one stream: epoch 0's permutation, then epoch 1's, ... (each drawn
from ``numpy.random.default_rng([seed, epoch])``). A *global batch* is the next
``global_batch_size`` samples of that stream; process ``p`` of ``P`` reads rows
``[p * B / P, (p + 1) * B / P)`` of it. The loader's ``position`` is the index of the next sample
in the stream — a number that does not depend on how many processes or data-parallel devices
read it, so a run saved with 4 processes resumes with 2 (or 1) at exactly the same sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from titanax.io._errors import DataError
from titanax.mesh import process_count as _process_count
from titanax.mesh import process_index as _process_index

__all__ = ["ShardedLoader", "default_collate"]

MASK_KEY = "mask"


def default_collate(records: Sequence[Any]) -> Any:
    """Stacks a list of records leaf by leaf into one batch (``np.stack`` along a new axis 0).

    Records are pytrees of the same structure (dicts, tuples, arrays, scalars): a list of
    ``{"x": [d], "y": ()}`` becomes ``{"x": [n, d], "y": [n]}``.
    """
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *records)


def _check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise DataError(f"ShardedLoader: {name}={value!r} must be an int >= {minimum}.")
    return int(value)


class ShardedLoader:
    """Iterates a dataset in globally shuffled batches, yielding this process's slice of each.

    Works over anything indexable by sample: a NumPy array or ``np.memmap`` (batches are
    ``dataset[indices]``), a dict of equal-length arrays (``{"x": ..., "y": ...}``, each column
    indexed), an object with ``__getitems__(indices)`` returning a whole batch (e.g.
    :class:`TokenWindows`), or any sequence of records (``dataset[i]`` each, stacked by
    ``collate``).

    Each epoch is a fresh permutation from ``seed`` (or the identity with ``shuffle=False``).
    With ``drop_last=True`` the ``len % global_batch_size`` samples left at the end of each
    epoch's permutation are skipped; with ``drop_last=False`` the last batch of an epoch is
    padded (with copies of its first sample) and every batch carries a boolean ``"mask"`` leaf
    ``[local_batch]`` that is ``False`` on padding (so batches need dict samples).

    ``position`` (the index of the next sample in the stream of epochs) is what a checkpoint
    saves; :meth:`seek` continues from it. It is a *global* index: resume with another process
    count or data-parallel degree (same dataset, seed and global batch size) and the next
    global batch is the same.

    Iteration is endless unless ``num_epochs`` is given. Not thread-safe; wrap it in
    :func:`prefetch_to_device` to overlap loading with the step.

    Args:
      dataset: the samples (see above); ``len(dataset)`` samples.
      global_batch_size: samples per step over all processes; divisible by ``process_count``.
      seed: non-negative int; fixes every epoch's order.
      shuffle: permute each epoch (default) or read in order.
      drop_last: skip each epoch's incomplete batch (default) or pad it and add ``"mask"``.
      process_index: this process (default ``jax.process_index()``).
      process_count: number of processes reading (default ``jax.process_count()``).
      collate: ``records -> batch`` for each process's list of samples; when given it is used
        for every dataset kind (samples fetched one by one). Default: :func:`default_collate`
        for sequences of records, direct indexing otherwise.
      num_epochs: stop after this many epochs (default: never stop).

    Raises:
      DataError: an empty dataset, columns of different lengths, a global batch size not
        divisible by ``process_count`` (the message lists sizes that fit), a dataset smaller
        than one batch with ``drop_last``, ``drop_last=False`` over a plain array, or a bad
        process index.

    Example:
      >>> import numpy as np
      >>> data = {"x": np.arange(10.0), "y": np.arange(10) % 2}
      >>> loader = ShardedLoader(data, global_batch_size=4, seed=0, process_index=1,
      ...                        process_count=2)
      >>> batch = next(loader)  # rows 2..3 of the first global batch
      >>> batch["x"].shape, loader.position
      ((2,), 4)
    """

    def __init__(
        self,
        dataset: Any,
        *,
        global_batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
        collate: Callable[[list[Any]], Any] | None = None,
        num_epochs: int | None = None,
    ) -> None:
        self._batch = _check_int("global_batch_size", global_batch_size, minimum=1)
        self._seed = _check_int("seed", seed, minimum=0)
        count = _process_count() if process_count is None else process_count
        self._count = _check_int("process_count", count, minimum=1)
        index = _process_index() if process_index is None else process_index
        self._index = _check_int("process_index", index, minimum=0)
        if self._index >= self._count:
            raise DataError(
                f"ShardedLoader: process_index={self._index} is not below "
                f"process_count={self._count}."
            )
        if self._batch % self._count:
            lower = (self._batch // self._count) * self._count
            near = [b for b in (lower, lower + self._count) if b > 0]
            raise DataError(
                f"ShardedLoader: global_batch_size={self._batch} does not divide over "
                f"process_count={self._count} processes (each process reads an equal slice). "
                f"Use a multiple of {self._count}, e.g. {near}."
            )
        self._num_epochs = (
            None if num_epochs is None else _check_int("num_epochs", num_epochs, minimum=1)
        )
        self._shuffle = bool(shuffle)
        self._drop_last = bool(drop_last)
        self._collate = collate
        self._dataset, self._kind, self._len = self._inspect(dataset)
        if self._len == 0:
            raise DataError("ShardedLoader: the dataset is empty (len 0).")
        if self._drop_last and self._len < self._batch:
            raise DataError(
                f"ShardedLoader: the dataset has {self._len} samples, fewer than one global "
                f"batch of {self._batch}, so drop_last=True would yield nothing. Use a smaller "
                "global_batch_size or drop_last=False (padded batches with a 'mask')."
            )
        if not self._drop_last and self._kind == "array" and collate is None:
            raise DataError(
                "ShardedLoader: drop_last=False adds a 'mask' leaf to every batch, which needs "
                "dict batches, but the dataset is a plain array. Pass {'x': array} instead."
            )
        self._epoch_len = (self._len // self._batch) * self._batch if self._drop_last else self._len
        self._position = 0
        self._perms: dict[int, np.ndarray] = {}

    @staticmethod
    def _inspect(dataset: Any) -> tuple[Any, str, int]:
        if isinstance(dataset, np.ndarray):
            if dataset.ndim == 0:
                raise DataError(
                    "ShardedLoader: a 0-d array has no samples; pass an array [n, ...]."
                )
            return dataset, "array", int(dataset.shape[0])
        if isinstance(dataset, Mapping):
            columns = {
                str(k): (v if isinstance(v, np.ndarray) else np.asarray(v))
                for k, v in dataset.items()
            }
            if not columns:
                raise DataError("ShardedLoader: the dict dataset has no columns.")
            lengths = {k: (int(v.shape[0]) if v.ndim else 0) for k, v in columns.items()}
            if len(set(lengths.values())) != 1:
                raise DataError(
                    f"ShardedLoader: dict columns have different lengths {lengths}; every column "
                    "needs one row per sample."
                )
            return columns, "mapping", next(iter(lengths.values()))
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise DataError(
                f"ShardedLoader: dataset of type {type(dataset).__name__} is not indexable; pass "
                "a NumPy array, a dict of arrays, or a sequence with __len__ and __getitem__."
            )
        kind = "batched" if hasattr(dataset, "__getitems__") else "records"
        return dataset, kind, len(dataset)

    # -- facts ---------------------------------------------------------------------------------

    @property
    def global_batch_size(self) -> int:
        """Samples per global batch (all processes together)."""
        return self._batch

    @property
    def local_batch_size(self) -> int:
        """Samples this process reads per batch (``global_batch_size // process_count``)."""
        return self._batch // self._count

    @property
    def process_index(self) -> int:
        """The process whose slice this loader reads."""
        return self._index

    @property
    def process_count(self) -> int:
        """The number of processes the global batch is split over."""
        return self._count

    @property
    def num_samples(self) -> int:
        """``len(dataset)``."""
        return self._len

    @property
    def samples_per_epoch(self) -> int:
        """Samples of each epoch that are read (``len`` rounded down to whole batches with
        ``drop_last``)."""
        return self._epoch_len

    @property
    def batches_per_epoch(self) -> int:
        """Global batches per epoch (the padded one included with ``drop_last=False``)."""
        return -(-self._epoch_len // self._batch)

    @property
    def epoch(self) -> int:
        """The epoch of the next sample."""
        return self._position // self._epoch_len

    @property
    def position(self) -> int:
        """Global index of the next sample in the stream of epochs (saved with checkpoints)."""
        return self._position

    def seek(self, position: int) -> None:
        """Continues at global sample index ``position`` (e.g. from checkpoint metadata).

        Raises:
          DataError: ``position`` is not a non-negative int.
        """
        if isinstance(position, bool) or not isinstance(position, int | np.integer) or position < 0:
            raise DataError(f"ShardedLoader.seek: position={position!r} must be an int >= 0.")
        self._position = int(position)

    def __repr__(self) -> str:
        return (
            f"ShardedLoader({self._kind} of {self._len}, global_batch_size={self._batch}, "
            f"process {self._index}/{self._count}, seed={self._seed}, shuffle={self._shuffle}, "
            f"drop_last={self._drop_last}, position={self._position})"
        )

    # -- reading -------------------------------------------------------------------------------

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            if self._shuffle:
                perm = np.random.default_rng([self._seed, epoch]).permutation(self._len)
            else:
                perm = np.arange(self._len)
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = perm
        return perm

    def _global_indices(self, position: int) -> np.ndarray | None:
        """Indices of the global batch that starts at ``position`` (shorter when padded)."""
        limit = None if self._num_epochs is None else self._num_epochs * self._epoch_len
        if self._drop_last:
            if limit is not None and position + self._batch > limit:
                return None
            parts, need = [], self._batch
            while need:
                epoch, offset = divmod(position, self._epoch_len)
                take = min(need, self._epoch_len - offset)
                parts.append(self._permutation(epoch)[offset : offset + take])
                need -= take
                position += take
            return np.concatenate(parts)
        if limit is not None and position >= limit:
            return None
        epoch, offset = divmod(position, self._epoch_len)
        return self._permutation(epoch)[offset : min(offset + self._batch, self._epoch_len)]

    def _fetch(self, indices: np.ndarray) -> Any:
        if self._collate is not None:
            return self._collate([self._dataset[int(i)] for i in indices])
        if self._kind == "array":
            return self._dataset[indices]
        if self._kind == "mapping":
            return {k: v[indices] for k, v in self._dataset.items()}
        if self._kind == "batched":
            return self._dataset.__getitems__(indices)
        return default_collate([self._dataset[int(i)] for i in indices])

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        """This process's slice of the next global batch; advances ``position``.

        Raises:
          StopIteration: after ``num_epochs`` epochs.
          DataError: ``drop_last=False`` and a batch that is not a dict (or already has a
            ``"mask"`` key).
        """
        indices = self._global_indices(self._position)
        if indices is None:
            raise StopIteration
        real = len(indices)
        if real < self._batch:
            indices = np.concatenate([indices, np.full(self._batch - real, indices[0])])
        local = self.local_batch_size
        lo = self._index * local
        batch = self._fetch(indices[lo : lo + local])
        if not self._drop_last:
            if not isinstance(batch, Mapping) or MASK_KEY in batch:
                raise DataError(
                    "ShardedLoader: drop_last=False adds a boolean 'mask' leaf to each batch, "
                    f"so batches must be dicts without a 'mask' key; got "
                    f"{type(batch).__name__}{' with mask' if isinstance(batch, Mapping) else ''}."
                    " Return dict samples (or collate to a dict), or use drop_last=True."
                )
            mask = np.arange(self._batch)[lo : lo + local] < real
            batch = {**batch, MASK_KEY: mask}
        self._position += real
        return batch
