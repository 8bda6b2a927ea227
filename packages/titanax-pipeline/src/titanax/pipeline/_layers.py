"""Layer order of stacked parameters: natural order vs. the interleaved storage order.

With ``p`` stages and ``v`` virtual stages, the ``L`` stacked layers form ``p·v`` chunks of
``c = L/(p·v)`` layers; chunk ``q`` (natural layers ``q·c … q·c + c − 1``) is virtual stage
``q`` and lives on device ``q mod p`` as its local chunk ``q div p``. Sharding the stacked
dim over the pipeline axis gives device ``s`` the rows ``s·L/p … (s+1)·L/p − 1``, so the
executor needs the rows in *storage order*: device ``s``'s rows hold its chunks
``s, s + p, s + 2p, …``, i.e. storage row ``s·(L/p) + j·c + k`` holds natural layer
``(j·p + s)·c + k``.

For GPipe and 1F1B (``v = 1``) both orders are the same. Keep parameters and checkpoints in
natural order (so they load into any layout) and convert once: :func:`to_storage_order` when
the train state is created or restored for an interleaved run, :func:`to_natural_order` on
its parameters and gradients before saving or comparing them with an unpipelined model.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from titanax.pipeline._errors import PipelineError
from titanax.pipeline._schedule import Schedule

__all__ = ["layer_permutation", "to_natural_order", "to_storage_order"]


def layer_permutation(num_layers: int, *, stages: int, virtual_stages: int) -> np.ndarray:
    """The storage-order permutation: ``storage[i] = natural[perm[i]]``.

    Args:
      num_layers: stacked layers ``L``, a multiple of ``stages × virtual_stages``.
      stages: pipeline stages ``p``.
      virtual_stages: layer chunks per stage ``v``.

    Returns:
      int64 ``[L]`` permutation; its inverse (``np.argsort``) maps storage back to natural.

    Raises:
      PipelineError: ``num_layers`` is not a positive multiple of ``stages × virtual_stages``.

    Example:
      >>> layer_permutation(8, stages=2, virtual_stages=2).tolist()
      [0, 1, 4, 5, 2, 3, 6, 7]
    """
    chunks = stages * virtual_stages
    if (
        isinstance(num_layers, bool)
        or not isinstance(num_layers, int | np.integer)
        or num_layers < 1
        or num_layers % chunks
    ):
        raise PipelineError(
            f"layer_permutation: num_layers={num_layers!r} is not a positive multiple of "
            f"stages × virtual_stages = {stages} × {virtual_stages} = {chunks}; every virtual "
            "stage needs the same number of layers."
        )
    per_chunk = int(num_layers) // chunks
    storage = np.arange(num_layers).reshape(stages, virtual_stages, per_chunk)
    s, j, k = np.meshgrid(
        np.arange(stages), np.arange(virtual_stages), np.arange(per_chunk), indexing="ij"
    )
    natural = (j * stages + s) * per_chunk + k
    perm = np.empty(num_layers, np.int64)
    perm[storage.ravel()] = natural.ravel()
    return perm


def _permute(tree: Any, schedule: Schedule, *, inverse: bool, api: str) -> Any:
    if not isinstance(schedule, Schedule):
        raise PipelineError(
            f"{api}: schedule must be a titanax.pipeline.Schedule, got {type(schedule).__name__}."
        )
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    sizes = {
        jax.tree_util.keystr(path): (leaf.shape[0] if leaf.shape else 0) for path, leaf in leaves
    }
    if len(set(sizes.values())) > 1:
        raise PipelineError(
            f"{api}: leaves disagree on the leading (layer) dim: {sizes}; pass only the stacked "
            "layer parameters (e.g. params['blocks'])."
        )
    if not leaves or schedule.virtual_stages == 1:
        return tree
    num_layers = next(iter(sizes.values()))
    perm = layer_permutation(
        num_layers, stages=schedule.stages, virtual_stages=schedule.virtual_stages
    )
    index = np.argsort(perm) if inverse else perm
    return jax.tree.map(lambda a: a[index], tree)


def to_storage_order(tree: Any, schedule: Schedule) -> Any:
    """Reorders stacked layers ``[L, ...]`` from natural order to the schedule's storage order.

    The identity unless ``schedule.virtual_stages > 1``. Works on numpy and JAX arrays (also
    inside ``jax.jit``; on arrays sharded over the pipeline axis the gather moves rows between
    devices, so convert once at init or restore, not every step).

    Args:
      tree: pytree whose leaves all have the same leading layer dim ``L``.
      schedule: the :class:`Schedule` (its ``stages`` and ``virtual_stages``).

    Returns:
      The same tree with every leaf's rows in storage order.

    Raises:
      PipelineError: leaves disagree on ``L``, or ``L`` is not a multiple of ``p·v``.
    """
    return _permute(tree, schedule, inverse=False, api="to_storage_order")


def to_natural_order(tree: Any, schedule: Schedule) -> Any:
    """Inverse of :func:`to_storage_order`: storage order back to natural layer order.

    Raises:
      PipelineError: leaves disagree on ``L``, or ``L`` is not a multiple of ``p·v``.
    """
    return _permute(tree, schedule, inverse=True, api="to_natural_order")
