"""Placing trees on a mesh: NamedSharding application, abstract state, batch specs, constraints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from titanax.sharding._errors import ShardingError
from titanax.sharding._paths import flatten_with_paths, leaf_shape_dtype
from titanax.sharding._specs import (
    check_spec,
    entry_axes,
    is_explicit,
    mesh_sizes,
    raise_problems,
)

__all__ = ["abstract_state", "apply_named_sharding", "constrain", "shard_batch_specs"]


def _paired(api: str, tree: Any, spec_tree: Any) -> tuple[list[tuple[str, Any, Any]], Any]:
    """``(path, leaf, spec)`` triples after checking ``spec_tree`` has ``tree``'s structure.

    A single ``PartitionSpec`` as ``spec_tree`` applies to every leaf.
    """
    pairs, treedef = flatten_with_paths(tree)
    if isinstance(spec_tree, PartitionSpec):
        return [(p, leaf, spec_tree) for p, leaf in pairs], treedef
    spec_pairs, spec_def = flatten_with_paths(spec_tree)
    if spec_def != treedef:
        paths = [p for p, _ in pairs]
        spec_paths = [p for p, _ in spec_pairs]
        only_tree = [p for p in paths if p not in set(spec_paths)]
        only_spec = [p for p in spec_paths if p not in set(paths)]
        detail = (
            f"paths only in the tree: {only_tree[:5]}{' ...' if len(only_tree) > 5 else ''}; "
            f"paths only in spec_tree: {only_spec[:5]}{' ...' if len(only_spec) > 5 else ''}"
            if only_tree or only_spec
            else f"the paths agree but the node types differ ({treedef} vs {spec_def})"
        )
        raise ShardingError(
            f"{api}: spec_tree does not have the structure of the tree ({len(paths)} leaves vs "
            f"{len(spec_paths)} specs): {detail}. Fix: build spec_tree from the same tree "
            "(build_param_specs, Plan.param_specs) or pass one PartitionSpec for every leaf."
        )
    out = []
    for (path, leaf), (_, spec) in zip(pairs, spec_pairs, strict=True):
        if not isinstance(spec, PartitionSpec):
            raise ShardingError(
                f"{api}: spec_tree leaf at path {path!r} is {spec!r} ({type(spec).__name__}), "
                "not a PartitionSpec. Fix: use jax.sharding.PartitionSpec leaves (to_spec-like "
                "tuples are only accepted in Rules)."
            )
        out.append((path, leaf, spec))
    return out, treedef


def _checked(
    api: str, mesh: Mesh, triples: list[tuple[str, Any, Any]]
) -> list[tuple[str, Any, PartitionSpec, tuple[int, ...], Any]]:
    sizes = mesh_sizes(mesh)
    problems: list[str] = []
    out = []
    for path, leaf, spec in triples:
        shape, dtype = leaf_shape_dtype(leaf, path=path)
        spec, found = check_spec(
            spec, api=api, path=path, shape=shape, origin="spec_tree", sizes=sizes
        )
        problems.extend(found)
        out.append((path, leaf, spec, shape, dtype))
    raise_problems(api, problems)
    return out


def apply_named_sharding(tree: Any, mesh: Mesh, spec_tree: Any) -> Any:
    """Places every leaf of ``tree`` on ``mesh`` with ``NamedSharding(mesh, spec)``.

    The spec tree must have exactly the structure of ``tree`` (or be one ``PartitionSpec`` for
    every leaf); every spec is checked against its leaf's shape and the mesh first, so a bad spec
    raises ``ShardingError`` naming the path instead of an error from inside ``jax.device_put``.

    Args:
      tree: pytree of ``jax.Array``/``np.ndarray``/scalars (any shapes; global values).
      mesh: the device mesh.
      spec_tree: ``PartitionSpec`` leaves with ``tree``'s structure (``Plan.param_specs``).

    Returns:
      ``tree`` with every leaf a ``jax.Array`` sharded as its spec says.

    Raises:
      ShardingError: a structure mismatch (naming the paths only in one tree), a leaf that is a
        ``jax.ShapeDtypeStruct`` (use :func:`abstract_state`), or any spec problem (rank,
        unknown axis, repeated axis, indivisible dim) — all problems in one error.

    Example:
      >>> import numpy as np
      >>> from jax.sharding import PartitionSpec as P
      >>> from titanax.mesh import MeshSpec
      >>> mesh = MeshSpec(axes=("data",), shape=(8,)).build()
      >>> out = apply_named_sharding({"w": np.zeros((8, 2))}, mesh, {"w": P("data")})
      >>> out["w"].sharding.spec
      P('data',)

    References:
      ``jax.device_put``, ``jax.sharding.NamedSharding``.
    """
    api = "apply_named_sharding"
    triples, treedef = _paired(api, tree, spec_tree)
    abstract = [p for p, leaf, _ in triples if isinstance(leaf, jax.ShapeDtypeStruct)]
    if abstract:
        raise ShardingError(
            f"{api}: leaves {abstract[:5]} are jax.ShapeDtypeStruct (shapes without data). Use "
            "abstract_state() for shapes, and materialize sharded values with "
            "jax.jit(init, out_shardings=...)."
        )
    checked = _checked(api, mesh, triples)
    leaves = [leaf for _, leaf, _, _, _ in checked]
    shardings = [NamedSharding(mesh, spec) for _, _, spec, _, _ in checked]
    placed = jax.device_put(leaves, shardings)
    return treedef.unflatten(placed)


def abstract_state(shape_tree: Any, mesh: Mesh, spec_tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves carrying ``NamedSharding(mesh, spec)``.

    For sharded initialisation (``jax.jit(init, out_shardings=...)`` from the result's
    ``.sharding``) and checkpoint restore onto this mesh (Orbax restores straight into the given
    shardings).

    Args:
      shape_tree: pytree of anything with ``.shape``/``.dtype`` (``jax.eval_shape`` output,
        arrays).
      mesh: the device mesh.
      spec_tree: ``PartitionSpec`` leaves with ``shape_tree``'s structure, or one spec for all.

    Returns:
      ``shape_tree`` with ``jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding)`` leaves.

    Raises:
      ShardingError: structure mismatch or any spec problem, as in :func:`apply_named_sharding`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from titanax.mesh import MeshSpec
      >>> mesh = MeshSpec(axes=("data",), shape=(8,)).build()
      >>> shapes = jax.eval_shape(lambda: {"w": jnp.zeros((16, 4))})
      >>> abstract_state(shapes, mesh, {"w": P("data")})["w"].sharding.spec
      P('data',)
    """
    api = "abstract_state"
    triples, treedef = _paired(api, shape_tree, spec_tree)
    out = [
        jax.ShapeDtypeStruct(
            shape,
            dtype,
            sharding=NamedSharding(mesh, spec),
            weak_type=bool(getattr(leaf, "weak_type", False)),
        )
        for _, leaf, spec, shape, dtype in _checked(api, mesh, triples)
    ]
    return treedef.unflatten(out)


def _data_axes(api: str, data_axes: Sequence[str] | str) -> tuple[str, ...]:
    axes = (data_axes,) if isinstance(data_axes, str) else tuple(data_axes)
    if not all(isinstance(a, str) and a for a in axes):
        raise ShardingError(
            f"{api}: data_axes={data_axes!r} must be mesh axis names, e.g. ('data', 'fsdp')."
        )
    if len(set(axes)) != len(axes):
        raise ShardingError(f"{api}: data_axes={axes!r} names an axis twice.")
    return axes


def shard_batch_specs(batch: Any, data_axes: Sequence[str], *, mesh: Mesh | None = None) -> Any:
    """Specs that split every batch leaf's leading dim over the data axes.

    Leaves of rank >= 1 get ``P(axes)`` on dim 0 (``P("data")`` for one axis,
    ``P(("data", "fsdp"))`` for two: the batch dim goes over the DP then the FSDP axis); scalars
    get ``P()``. With no data axes every leaf is replicated.

    Args:
      batch: pytree of arrays or ``jax.ShapeDtypeStruct`` ``[batch, ...]`` (global shapes).
      data_axes: the data axes, e.g. ``Plan.data_axes``.
      mesh: when given, the axes must exist and every leading dim must divide by the product of
        their sizes.

    Returns:
      A pytree of ``PartitionSpec`` with ``batch``'s structure.

    Raises:
      ShardingError: an axis not in the mesh, or a leaf whose leading dim does not divide —
        naming the leaf, its size and the axes with their sizes.

    Example:
      >>> import numpy as np
      >>> shard_batch_specs({"tokens": np.zeros((8, 16), np.int32)}, ("data", "fsdp"))
      {'tokens': P(('data', 'fsdp'),)}
    """
    api = "shard_batch_specs"
    axes = _data_axes(api, data_axes)
    entry: Any = None if not axes else axes[0] if len(axes) == 1 else axes
    pairs, treedef = flatten_with_paths(batch)
    sizes = mesh_sizes(mesh) if mesh is not None else None
    problems: list[str] = []
    if sizes is not None:
        missing = [a for a in axes if a not in sizes]
        if missing:
            raise ShardingError(
                f"{api}: data axes {list(missing)} are not in the mesh "
                f"({', '.join(f'{k}={v}' for k, v in sizes.items())}). Fix: spell the axes as "
                "in the MeshSpec."
            )
    specs = []
    for path, leaf in pairs:
        shape, _ = leaf_shape_dtype(leaf, path=path)
        if not shape or entry is None:
            specs.append(PartitionSpec())
            continue
        if sizes is not None:
            total = 1
            for a in axes:
                total *= sizes[a]
            if shape[0] % total:
                parts = " × ".join(f"{a}={sizes[a]}" for a in axes)
                problems.append(
                    f"{api}: batch leaf {path!r} with shape {shape} has leading (batch) dim "
                    f"{shape[0]}, not divisible by the data axes {axes!r} ({parts} = {total}). "
                    f"Fix: use a batch size that is a multiple of {total}."
                )
        specs.append(PartitionSpec(entry))
    raise_problems(api, problems)
    return treedef.unflatten(specs)


def _keep(spec: PartitionSpec, names: set[str]) -> PartitionSpec:
    entries: list[Any] = []
    for e in spec:
        kept = tuple(a for a in entry_axes(e) if a in names)
        entries.append(None if not kept else kept[0] if len(kept) == 1 else kept)
    return PartitionSpec(*entries)


def constrain(x: Any, mesh: Mesh, spec_tree: Any) -> Any:
    """Constrains the layout of ``x`` (an activation or parameter) inside a global-view step.

    For the mesh's Auto axes this is ``jax.lax.with_sharding_constraint`` (a hint the XLA
    partitioner must honour at this point); for Explicit axes it is ``jax.reshard`` (the layout
    becomes part of the array's type, ``jax.typeof(x).sharding``). A mesh with both kinds gets
    both, each with the spec restricted to its own axes. Works inside and outside ``jax.jit``.

    Args:
      x: array or pytree of arrays (global view: global shapes).
      mesh: the concrete mesh the step runs on.
      spec_tree: one ``PartitionSpec`` for every leaf, or a tree of them with ``x``'s structure.

    Returns:
      ``x`` with the requested layout.

    Raises:
      ShardingError: a structure mismatch or a spec problem (rank, unknown axis, repeated axis,
        indivisible dim) — checked on the traced shapes, before JAX sees the spec.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from titanax.mesh import MeshSpec
      >>> mesh = MeshSpec(axes=("data",), shape=(8,)).build()
      >>> y = jax.jit(lambda a: constrain(a * 2, mesh, P("data")))(jnp.ones((8, 2)))
      >>> y.sharding.spec
      P('data',)

    References:
      ``jax.lax.with_sharding_constraint``, ``jax.reshard``, ``jax.sharding.AxisType``.
    """
    api = "constrain"
    triples, treedef = _paired(api, x, spec_tree)
    checked = _checked(api, mesh, triples)
    names = [str(a) for a in mesh.axis_names]
    explicit = {a for a in names if is_explicit(mesh, a)}
    auto = set(names) - explicit
    out = []
    for _, leaf, spec, _, _ in checked:
        if explicit:
            leaf = jax.reshard(leaf, NamedSharding(mesh, _keep(spec, explicit)))
        if auto:
            leaf = jax.lax.with_sharding_constraint(leaf, NamedSharding(mesh, _keep(spec, auto)))
        out.append(leaf)
    return treedef.unflatten(out)
