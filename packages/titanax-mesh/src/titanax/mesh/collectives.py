"""Checked collectives for the per-device view (inside ``jax.shard_map``).

Each function is a thin, differentiable wrapper over the ``jax.lax`` collective of the same
meaning. Before tracing the collective it checks that every axis name is bound — a mesh axis of
the ``jax.shard_map`` in force (or a ``vmap``/``pmap`` axis name) — and lists the bound axes when
one is not, and it checks the arguments JAX would otherwise reject with a less specific error
(``perm`` that is not a permutation, dims that do not divide by the axis size).

Shapes below are per device. ``n`` is the size of ``axis`` (the product of sizes when ``axis``
is a tuple of names). All functions accept a pytree ``x`` and apply leaf-wise unless noted.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jax.sharding import PartitionSpec as P
  >>> from titanax.mesh import MeshSpec, collectives
  >>> mesh = MeshSpec(axes=("data",), shape=(8,)).build()
  >>> f = jax.shard_map(lambda x: collectives.psum(x, "data"), mesh=mesh,
  ...                   in_specs=P("data"), out_specs=P())
  >>> f(jnp.arange(8.0))
  Array([28.], dtype=float32)

References:
  ``jax.lax`` parallel operators; ``jax.shard_map``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias, TypeVar

import jax
import jax.numpy as jnp
from jax import lax

from titanax.mesh._errors import CollectiveError

__all__ = [
    "AxisName",
    "all_gather",
    "all_to_all",
    "axis_index",
    "axis_size",
    "broadcast",
    "pmax",
    "pmean",
    "pmin",
    "ppermute",
    "psum",
    "reduce_scatter",
]

AxisName: TypeAlias = str | tuple[str, ...]
T = TypeVar("T")


def _names(axis: AxisName) -> tuple[str, ...]:
    if isinstance(axis, str):
        return (axis,)
    if isinstance(axis, Sequence) and axis and all(isinstance(a, str) for a in axis):
        return tuple(axis)
    raise CollectiveError(
        f"axis={axis!r} must be a mesh axis name or a non-empty tuple of names, e.g. 'data' or "
        "('data', 'fsdp')."
    )


def _bound_axes() -> tuple[str, ...]:
    mesh = jax.sharding.get_abstract_mesh()
    return tuple(str(a) for a in getattr(mesh, "axis_names", ()))


def _check_axes(api: str, axis: AxisName) -> tuple[str, ...]:
    """Returns ``axis`` as a tuple after checking every name is bound in the current trace."""
    names = _names(axis)
    mesh_axes = _bound_axes()
    for name in names:
        if name in mesh_axes:
            continue
        try:  # names bound by vmap(axis_name=...) or pmap are not part of the abstract mesh
            lax.axis_size(name)
        except NameError:
            where = (
                f"the mesh in force has axes {list(mesh_axes)}"
                if mesh_axes
                else "no mesh axis is bound here (not inside jax.shard_map)"
            )
            raise CollectiveError(
                f"collectives.{api}: axis {name!r} is not bound; {where}. Call it inside "
                "jax.shard_map over a mesh with that axis (or Engine's per-device view), and "
                "spell the axis as in the MeshSpec."
            ) from None
    return names


def _size(names: tuple[str, ...]) -> int:
    size = 1
    for name in names:
        size *= int(lax.axis_size(name))
    return size


def _one(names: tuple[str, ...]) -> AxisName:
    return names[0] if len(names) == 1 else names


def psum(x: T, axis: AxisName) -> T:
    """Sum over ``axis``: every device gets the total. Shapes: ``[...] -> [...]``.

    Transpose (gradient): ``psum`` of the cotangent is not applied again — JAX's rule makes the
    gradient of a replicated result flow back unchanged to each contribution.

    Raises:
      CollectiveError: an axis name that is not bound.
    """
    names = _check_axes("psum", axis)
    return lax.psum(x, _one(names))  # type: ignore[no-any-return]


def pmean(x: T, axis: AxisName) -> T:
    """Mean over ``axis`` (``psum(x) / n``). Shapes: ``[...] -> [...]``.

    The usual data-parallel gradient reduction: ``grads = pmean(grads, "data")``.

    Raises:
      CollectiveError: an axis name that is not bound.
    """
    names = _check_axes("pmean", axis)
    return lax.pmean(x, _one(names))  # type: ignore[no-any-return]


def pmax(x: T, axis: AxisName) -> T:
    """Elementwise maximum over ``axis``. Shapes: ``[...] -> [...]``.

    Raises:
      CollectiveError: an axis name that is not bound.
    """
    names = _check_axes("pmax", axis)
    return lax.pmax(x, _one(names))  # type: ignore[no-any-return]


def pmin(x: T, axis: AxisName) -> T:
    """Elementwise minimum over ``axis``. Shapes: ``[...] -> [...]``.

    Raises:
      CollectiveError: an axis name that is not bound.
    """
    names = _check_axes("pmin", axis)
    return lax.pmin(x, _one(names))  # type: ignore[no-any-return]


def _check_dim(api: str, what: str, x: Any, dim: int) -> int:
    ndim = jnp.ndim(x)
    if not -ndim <= dim < ndim:
        raise CollectiveError(
            f"collectives.{api}: {what}={dim} is out of range for an input of shape "
            f"{jnp.shape(x)} (rank {ndim})."
        )
    return dim % ndim


def all_gather(x: T, axis: AxisName, *, tiled: bool, gather_dim: int = 0) -> T:
    """Gathers the shards of every device along ``axis``.

    Shapes: ``tiled=True``: ``[d0, ..., dk, ...] -> [d0, ..., n*dk, ...]`` (concatenated along
    ``gather_dim = k``); ``tiled=False``: a new dim of size ``n`` is inserted at ``gather_dim``.
    Transpose: ``reduce_scatter`` with the same ``tiled``.

    Args:
      x: array (or pytree) per device.
      axis: axis name(s) to gather over.
      tiled: concatenate (``True``) or stack (``False``); required, there is no default.
      gather_dim: where the gathered dim goes.

    Raises:
      CollectiveError: an unbound axis, or ``gather_dim`` outside the input rank.
    """
    names = _check_axes("all_gather", axis)

    def one(leaf: Any) -> Any:
        rank = jnp.ndim(leaf) + (0 if tiled else 1)
        if not -rank <= gather_dim < rank:
            raise CollectiveError(
                f"collectives.all_gather: gather_dim={gather_dim} is out of range for an input "
                f"of shape {jnp.shape(leaf)} with tiled={tiled}."
            )
        return lax.all_gather(leaf, _one(names), axis=gather_dim % rank, tiled=tiled)

    return jax.tree.map(one, x)  # type: ignore[no-any-return]


def reduce_scatter(x: T, axis: AxisName, *, tiled: bool, scatter_dim: int = 0) -> T:
    """Sums over ``axis`` and leaves each device one block of the result.

    Shapes: ``tiled=True``: ``[..., dk, ...] -> [..., dk/n, ...]`` (``dk`` must divide by
    ``n``); ``tiled=False``: ``[..., n, ...] -> [...]`` (the dim at ``scatter_dim`` must equal
    ``n`` and is removed). Device ``i`` gets block ``i``. ``all_gather(reduce_scatter(x),
    tiled=True) == psum(x)``. Transpose: ``all_gather``.

    Raises:
      CollectiveError: an unbound axis, ``scatter_dim`` out of range, or a dim that does not fit
        the axis size — naming the shape, the dim and the axis size.
    """
    names = _check_axes("reduce_scatter", axis)
    n = _size(names)

    def one(leaf: Any) -> Any:
        dim = _check_dim("reduce_scatter", "scatter_dim", leaf, scatter_dim)
        size = jnp.shape(leaf)[dim]
        if tiled and size % n:
            raise CollectiveError(
                f"collectives.reduce_scatter: dim {dim} of shape {jnp.shape(leaf)} has size "
                f"{size}, not divisible by axis {_one(names)!r} of size {n}. Pad the dim to a "
                f"multiple of {n} or scatter another dim."
            )
        if not tiled and size != n:
            raise CollectiveError(
                f"collectives.reduce_scatter: with tiled=False dim {dim} of shape "
                f"{jnp.shape(leaf)} must equal the size {n} of axis {_one(names)!r}, got {size}."
            )
        return lax.psum_scatter(leaf, _one(names), scatter_dimension=dim, tiled=tiled)

    return jax.tree.map(one, x)  # type: ignore[no-any-return]


def all_to_all(x: T, axis: AxisName, *, split_dim: int, concat_dim: int, tiled: bool = True) -> T:
    """Splits ``split_dim`` into ``n`` blocks, sends block ``j`` to device ``j``, concatenates.

    Shapes (``tiled=True``): ``[..., s, ..., c, ...] -> [..., s/n, ..., c*n, ...]`` with
    ``s`` at ``split_dim`` and ``c`` at ``concat_dim``; ``s`` must divide by ``n``. With
    ``tiled=False`` the split dim must equal ``n`` and is kept (size ``n``, now indexing the
    source device). Used for Ulysses-style sequence↔head resharding. Transpose: the
    ``all_to_all`` with the two dims swapped.

    Raises:
      CollectiveError: an unbound axis, a dim out of range, or a split dim that does not divide
        by the axis size.
    """
    names = _check_axes("all_to_all", axis)
    n = _size(names)

    def one(leaf: Any) -> Any:
        split = _check_dim("all_to_all", "split_dim", leaf, split_dim)
        concat = _check_dim("all_to_all", "concat_dim", leaf, concat_dim)
        size = jnp.shape(leaf)[split]
        if size % n or (not tiled and size != n):
            need = f"equal {n}" if not tiled else f"be divisible by {n}"
            raise CollectiveError(
                f"collectives.all_to_all: split_dim={split} of shape {jnp.shape(leaf)} has size "
                f"{size}; it must {need} (axis {_one(names)!r} has size {n})."
            )
        return lax.all_to_all(leaf, _one(names), split, concat, tiled=tiled)

    return jax.tree.map(one, x)  # type: ignore[no-any-return]


def ppermute(x: T, axis: AxisName, perm: Sequence[tuple[int, int]]) -> T:
    """Sends each device's ``x`` along ``axis`` by ``perm = [(source, destination), ...]``.

    Shapes: ``[...] -> [...]``. A device that is no destination receives zeros. ``perm`` must be
    a (partial) permutation: every index in ``[0, n)``, no source twice, no destination twice.
    Transpose: ``ppermute`` with the pairs reversed.

    Raises:
      CollectiveError: an unbound axis, or ``perm`` with an index out of range or a repeated
        source or destination — naming the offending pairs.
    """
    names = _check_axes("ppermute", axis)
    n = _size(names)
    pairs = [tuple(p) for p in perm]
    bad = [p for p in pairs if len(p) != 2 or not all(0 <= int(i) < n for i in p)]
    if bad:
        raise CollectiveError(
            f"collectives.ppermute: perm pairs {bad} are not (source, destination) indices in "
            f"[0, {n}) for axis {_one(names)!r} of size {n}."
        )
    sources = [p[0] for p in pairs]
    dests = [p[1] for p in pairs]
    repeated = sorted({s for s in sources if sources.count(s) > 1}) or sorted(
        {d for d in dests if dests.count(d) > 1}
    )
    if repeated:
        raise CollectiveError(
            f"collectives.ppermute: perm={pairs} is not a permutation: index {repeated} appears "
            "twice as a source or as a destination. Each device sends at most once and receives "
            "at most once."
        )
    clean = [(int(a), int(b)) for a, b in pairs]
    return lax.ppermute(x, _one(names), perm=clean)  # type: ignore[no-any-return]


def broadcast(x: T, axis: AxisName, *, source: int = 0) -> T:
    """Every device along ``axis`` gets the value of device ``source``. Shapes: same.

    Computed as ``psum(where(axis_index == source, x, 0))`` (one all-reduce), so it is
    differentiable: the gradient of every copy flows back to the source device.

    Raises:
      CollectiveError: an unbound axis or ``source`` outside ``[0, n)``.
    """
    names = _check_axes("broadcast", axis)
    n = _size(names)
    if isinstance(source, bool) or not isinstance(source, int) or not 0 <= source < n:
        raise CollectiveError(
            f"collectives.broadcast: source={source!r} must be an index in [0, {n}) along axis "
            f"{_one(names)!r}."
        )
    is_source = lax.axis_index(_one(names)) == source

    def one(leaf: Any) -> Any:
        return jnp.where(is_source, leaf, jnp.zeros_like(leaf))

    return lax.psum(jax.tree.map(one, x), _one(names))  # type: ignore[no-any-return]


def axis_index(axis: AxisName) -> jax.Array:
    """This device's index along ``axis`` (row-major over a tuple of names); int32 scalar.

    Raises:
      CollectiveError: an axis name that is not bound.
    """
    names = _check_axes("axis_index", axis)
    return lax.axis_index(_one(names))


def axis_size(axis: AxisName) -> int:
    """Number of devices along ``axis`` (product over a tuple of names); a Python int.

    Raises:
      CollectiveError: an axis name that is not bound.
    """
    return _size(_check_axes("axis_size", axis))
