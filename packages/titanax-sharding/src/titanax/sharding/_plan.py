"""``Plan``: DP, FSDP, TP and PP composed on one mesh, validated before anything compiles.

The final spec of a parameter is built in a fixed, documented order (torchtitan's
``parallelize``: PP split -> TP rules -> FSDP/DP):

1. **PP** — a parameter matching a ``PP.stacked`` glob has its leading (layer) dim sharded over
   the pipeline axis.
2. **Rules** — the most specific matching ``Plan.rules`` entry, or if none matches, the most
   specific ``TP.rules`` entry, gives the spec of the other dims (see :class:`Rules`).
3. **FSDP** — a parameter of at least ``FSDP.min_size_bytes`` whose spec does not use the FSDP
   axis yet gets it on its largest still-free dim that divides by the axis size.
4. Everything else is replicated (DP replicates parameters by definition).

Specs keep the length the rule gave them; PP and FSDP extend a spec only as far as the dim they
shard. Scalars are always ``P()``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from jax.sharding import Mesh, PartitionSpec

from titanax.sharding._errors import ShardingError
from titanax.sharding._layout import Layout, itemsize
from titanax.sharding._parallelisms import DP, FSDP, PP, TP
from titanax.sharding._paths import flatten_with_paths, leaf_shape_dtype
from titanax.sharding._placement import _checked, _paired, shard_batch_specs
from titanax.sharding._plan_dict import plan_fields_from_dict, plan_to_dict
from titanax.sharding._rules import Rules, glob_specificity
from titanax.sharding._specs import (
    Indivisible,
    check_spec,
    format_spec,
    mesh_sizes,
    raise_problems,
    spec_axes,
)

__all__ = ["Plan"]

_ONE_F_ONE_B = ("1f1b", "interleaved")


@dataclasses.dataclass(frozen=True, slots=True)
class _Leaf:
    path: str
    shape: tuple[int, ...]
    dtype: Any
    spec: PartitionSpec
    rule: str | None
    matched: bool


def _mesh_text(sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sizes.items())


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """How parameters, optimizer state and the batch are laid out over one mesh.

    Composes up to four parallelisms, each on its own mesh axis, plus extra user rules. See the
    module docstring for the order in which a parameter's spec is built.

    Args:
      data_parallel: ``DP`` or ``None``.
      fsdp: ``FSDP`` or ``None``.
      tensor_parallel: ``TP`` (with its rules) or ``None``.
      pipeline_parallel: ``PP`` or ``None``.
      rules: extra user rules, consulted before the TP rules (a matching user rule wins over
        every TP rule); a mapping or pairs are converted to :class:`Rules`.
      indivisible: ``"raise"`` (default) or ``"replicate"``: replicate a rule's dim that does not
        divide over its axes, logging one warning per path.

    Raises:
      ShardingError: a field of the wrong type or an unknown ``indivisible`` policy.

    Example:
      >>> import numpy as np
      >>> from titanax.mesh import MeshSpec
      >>> from titanax.sharding import DP, TP, tp_rules
      >>> mesh = MeshSpec(axes=("data", "tensor"), shape=(4, 2)).build()
      >>> plan = Plan(data_parallel=DP("data"), tensor_parallel=TP("tensor", rules=tp_rules.gpt()))
      >>> plan.param_specs({"head": {"kernel": np.zeros((8, 32))}}, mesh)
      {'head': {'kernel': P(None, 'tensor')}}
    """

    data_parallel: DP | None = None
    fsdp: FSDP | None = None
    tensor_parallel: TP | None = None
    pipeline_parallel: PP | None = None
    rules: Rules = dataclasses.field(default_factory=Rules)
    indivisible: Indivisible = "raise"

    def __post_init__(self) -> None:
        for name, kind in (
            ("data_parallel", DP),
            ("fsdp", FSDP),
            ("tensor_parallel", TP),
            ("pipeline_parallel", PP),
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise ShardingError(
                    f"Plan: {name}={value!r} must be a {kind.__name__}(...) or None."
                )
        if not isinstance(self.rules, Rules):
            if not isinstance(self.rules, Mapping | list | tuple):
                raise ShardingError(
                    f"Plan: rules={self.rules!r} must be Rules, a mapping {{glob: spec}} or "
                    "(glob, spec) pairs."
                )
            object.__setattr__(self, "rules", Rules(self.rules))
        if self.indivisible not in ("raise", "replicate"):
            raise ShardingError(
                f"Plan: indivisible={self.indivisible!r} must be 'raise' (default) or 'replicate'."
            )

    # -- roles ---------------------------------------------------------------------------------

    @property
    def data_axes(self) -> tuple[str, ...]:
        """The axes the batch's leading dim is split over: the DP axis, then the FSDP axis."""
        axes = []
        if self.data_parallel is not None:
            axes.append(self.data_parallel.axis)
        if self.fsdp is not None and self.fsdp.axis not in axes:
            axes.append(self.fsdp.axis)
        return tuple(axes)

    def _roles(self) -> list[tuple[str, str]]:
        roles = []
        for label, record in (
            ("data_parallel (DP)", self.data_parallel),
            ("fsdp (FSDP)", self.fsdp),
            ("tensor_parallel (TP)", self.tensor_parallel),
            ("pipeline_parallel (PP)", self.pipeline_parallel),
        ):
            if record is not None:
                roles.append((label, record.axis))
        return roles

    def _mesh_problems(self, sizes: Mapping[str, int], *, api: str) -> list[str]:
        problems = []
        where = f"{api} on mesh ({_mesh_text(sizes)})"
        for label, axis in self._roles():
            if axis not in sizes:
                problems.append(
                    f"{where}: {label} uses axis {axis!r}, which is not in the mesh. Fix: spell "
                    "the axis as in the MeshSpec, or add it to the mesh."
                )
        seen: dict[str, str] = {}
        for label, axis in self._roles():
            if axis in seen:
                problems.append(
                    f"{where}: mesh axis {axis!r} has two roles, {seen[axis]} and {label}; each "
                    "role needs its own axis. Fix: add another mesh axis (size 1 is fine) and "
                    "point one of them at it."
                )
            else:
                seen[axis] = label
        pp = self.pipeline_parallel
        if pp is not None and pp.axis in sizes and pp.stages != sizes[pp.axis]:
            problems.append(
                f"{where}: PP(stages={pp.stages}) does not match pipeline axis {pp.axis!r} of "
                f"size {sizes[pp.axis]}; each device along the axis runs one stage. Fix: set "
                f"stages={sizes[pp.axis]} or resize the axis to {pp.stages}."
            )
        return problems

    def _rule_axis_problems(self, sizes: Mapping[str, int], *, api: str) -> list[str]:
        problems = []
        sources = [("Plan.rules", self.rules)]
        if self.tensor_parallel is not None:
            sources.append(("TP.rules", self.tensor_parallel.rules))
        for label, rules in sources:
            for pattern, spec in rules.items():
                for axis in dict.fromkeys(spec_axes(spec)):
                    if axis not in sizes:
                        problems.append(
                            f"{api}: {label} rule {pattern!r} -> {format_spec(spec)} uses mesh "
                            f"axis {axis!r}, which is not in the mesh ({_mesh_text(sizes)}). "
                            "Fix: spell the axis as in the MeshSpec, or add it to the mesh."
                        )
        return problems

    # -- resolution ----------------------------------------------------------------------------

    def _match_rule(self, path: str, api: str) -> tuple[str, str, PartitionSpec] | None:
        found = self.rules.match(path, api=api)
        if found is not None:
            return "rule", found[0], found[1]
        if self.tensor_parallel is not None:
            found = self.tensor_parallel.rules.match(path, api=api)
            if found is not None:
                return "tp", found[0], found[1]
        return None

    def _stacked_glob(self, path: str) -> str | None:
        pp = self.pipeline_parallel
        if pp is None:
            return None
        for glob in pp.stacked:
            if glob_specificity(glob, path) is not None:
                return glob
        return None

    def _resolve_leaf(
        self,
        path: str,
        shape: tuple[int, ...],
        dtype: Any,
        sizes: Mapping[str, int],
        *,
        api: str,
        optimizer: bool,
    ) -> tuple[_Leaf, list[str]]:
        rank = len(shape)
        if rank == 0:
            return _Leaf(path, shape, dtype, PartitionSpec(), None, True), []
        entries: list[Any] = [None] * rank
        length = 0
        sources: list[str] = []
        pp = self.pipeline_parallel
        glob = self._stacked_glob(path)
        stacked = pp is not None and glob is not None  # placed by a PP stacked glob: matched
        if pp is not None and glob is not None:
            entries[0] = pp.axis
            length = 1
            sources.append(f"pp {glob!r}")
        try:
            found = self._match_rule(path, api)
        except ShardingError as err:
            return _Leaf(path, shape, dtype, PartitionSpec(), None, True), [str(err)]
        if found is not None:
            kind, pattern, spec = found
            origin = f"{'Plan.rules' if kind == 'rule' else 'TP.rules'} rule {pattern!r}"
            _, problems = check_spec(
                spec, api=api, path=path, shape=shape, origin=origin, sizes=None
            )
            if problems:
                return _Leaf(path, shape, dtype, PartitionSpec(), None, True), problems
            for dim, entry in enumerate(spec):
                if entry is None:
                    continue
                if entries[dim] is not None and entries[dim] != entry:
                    return _Leaf(path, shape, dtype, PartitionSpec(), None, True), [
                        f"{api}: path {path!r} with shape {shape}: {origin} puts {entry!r} on "
                        f"dim {dim}, but PP stacked glob {glob!r} shards dim {dim} (the layer "
                        f"dim) over pipeline axis {entries[dim]!r}. Fix: make the rule's first "
                        f"entry None or {entries[dim]!r}, or stop listing the path in "
                        "PP.stacked."
                    ]
                entries[dim] = entry
            length = max(length, len(spec))
            sources.append(f"{kind} {pattern!r}")
        merged = PartitionSpec(*entries[:length])
        origin = " + ".join(sources) if sources else "the default spec"
        merged, problems = check_spec(
            merged,
            api=api,
            path=path,
            shape=shape,
            origin=origin,
            sizes=sizes,
            indivisible=self.indivisible,
        )
        if problems:
            return _Leaf(path, shape, dtype, merged, None, found is not None or stacked), problems
        fsdp = self.fsdp
        if (
            fsdp is not None
            and (optimizer or not fsdp.zero1)
            and fsdp.axis in sizes
            and fsdp.axis not in spec_axes(merged)
            and math.prod(shape) * itemsize(dtype) >= fsdp.min_size_bytes
        ):
            n = sizes[fsdp.axis]
            entries = [*merged, *([None] * (rank - len(merged)))]
            free = [d for d in range(rank) if entries[d] is None and shape[d] % n == 0]
            if free:
                dim = max(free, key=lambda d: (shape[d], -d))
                entries[dim] = fsdp.axis
                merged = PartitionSpec(*entries[: max(len(merged), dim + 1)])
                sources.append("fsdp")
        rule = " + ".join(sources) if sources else None
        return _Leaf(path, shape, dtype, merged, rule, found is not None or stacked), []

    def _resolve(
        self, tree: Any, mesh: Mesh, *, api: str, optimizer: bool
    ) -> tuple[list[_Leaf], Any, list[str]]:
        sizes = mesh_sizes(mesh)
        problems = self._mesh_problems(sizes, api=api)
        pairs, treedef = flatten_with_paths(tree)
        leaves = []
        for path, leaf in pairs:
            shape, dtype = leaf_shape_dtype(leaf, path=path)
            resolved, found = self._resolve_leaf(
                path, shape, dtype, sizes, api=api, optimizer=optimizer
            )
            leaves.append(resolved)
            problems.extend(found)
        problems.extend(self._stacked_problems(leaves, sizes, api=api))
        return leaves, treedef, problems

    def _stacked_problems(
        self, leaves: list[_Leaf], sizes: Mapping[str, int], *, api: str
    ) -> list[str]:
        pp = self.pipeline_parallel
        if pp is None or pp.virtual_stages == 1:
            return []
        chunks = pp.stages * pp.virtual_stages
        return [
            f"{api}: stacked path {leaf.path!r} with shape {leaf.shape} has {leaf.shape[0]} "
            f"layers, not divisible by stages × virtual_stages = {pp.stages} × "
            f"{pp.virtual_stages} = {chunks}. Fix: use a layer count that is a multiple of "
            f"{chunks}, or fewer virtual stages."
            for leaf in leaves
            if leaf.shape and self._stacked_glob(leaf.path) is not None and leaf.shape[0] % chunks
        ]

    # -- public API ----------------------------------------------------------------------------

    def param_specs(self, tree: Any, mesh: Mesh) -> Any:
        """The final PartitionSpec of every parameter: PP -> rules -> FSDP -> replicated.

        Args:
          tree: parameters or their shapes (``jax.eval_shape`` output); any pytree.
          mesh: the device mesh.

        Returns:
          A pytree of ``PartitionSpec`` with ``tree``'s structure.

        Raises:
          ShardingError: every problem at once — plan roles that do not fit the mesh, and each
            parameter's spec problem (rank, unknown axis, repeated axis, indivisible dim, rule
            ties, PP conflicts), naming the path, shape, dim, axis and size, and the rule.
        """
        api = "Plan.param_specs"
        leaves, treedef, problems = self._resolve(tree, mesh, api=api, optimizer=False)
        raise_problems(api, problems, context=f" on mesh ({_mesh_text(mesh_sizes(mesh))})")
        return treedef.unflatten([leaf.spec for leaf in leaves])

    def optimizer_specs(self, tree: Any, mesh: Mesh) -> Any:
        """Specs for the parameter-shaped leaves of the optimizer state.

        Same as :meth:`param_specs`, except that FSDP applies even with ``FSDP(zero1=True)``
        (ZeRO-1 shards only the optimizer state). The Engine maps them onto the state with
        ``optax.tree_map_params(opt, lambda p, s: s, opt_state, specs,
        transform_non_params=lambda _: P())``.

        Args:
          tree: the parameters (or their shapes) — not the optimizer state.
          mesh: the device mesh.

        Returns:
          A pytree of ``PartitionSpec`` with ``tree``'s structure.

        Raises:
          ShardingError: as :meth:`param_specs`.
        """
        api = "Plan.optimizer_specs"
        leaves, treedef, problems = self._resolve(tree, mesh, api=api, optimizer=True)
        raise_problems(api, problems, context=f" on mesh ({_mesh_text(mesh_sizes(mesh))})")
        return treedef.unflatten([leaf.spec for leaf in leaves])

    def batch_specs(self, batch: Any, mesh: Mesh) -> Any:
        """Specs splitting every batch leaf's leading dim over :attr:`data_axes`.

        Raises:
          ShardingError: a data axis not in the mesh or a leading dim that does not divide.
        """
        return shard_batch_specs(batch, self.data_axes, mesh=mesh)

    def validate(self, mesh: Mesh, *, params: Any = None, batch: Any = None) -> None:
        """Checks the plan against the mesh (and parameters and batch), before any compile.

        Collects every problem and raises one error listing them all: each role's axis exists in
        the mesh; no axis has two roles; ``PP.stages`` equals the pipeline axis size;
        ``microbatches >= stages`` for ``"1f1b"``/``"interleaved"``; every axis a rule names
        exists (without ``params``); every parameter resolves (with ``params``: rank, unknown
        axis, repeated axis, divisibility — e.g. a dim of 17 under an 8-way rule — ties and PP
        conflicts); every batch leaf's leading dim divides by the product of the data axes'
        sizes, times ``microbatches`` with PP.

        Args:
          mesh: the device mesh.
          params: optional parameters or their shapes.
          batch: optional batch (arrays or shapes, global).

        Raises:
          ShardingError: listing every problem found, one per line.
        """
        api = "Plan.validate"
        sizes = mesh_sizes(mesh)
        problems = self._mesh_problems(sizes, api=api)
        pp = self.pipeline_parallel
        if pp is not None and pp.schedule in _ONE_F_ONE_B and pp.microbatches < pp.stages:
            problems.append(
                f"{api}: PP(schedule={pp.schedule!r}) has microbatches={pp.microbatches} < "
                f"stages={pp.stages}; {pp.schedule} needs at least as many microbatches as "
                f"stages to fill the pipeline. Fix: use microbatches >= {pp.stages}, or "
                "schedule='gpipe'."
            )
        if params is None:
            problems.extend(self._rule_axis_problems(sizes, api=api))
        else:
            _, _, found = self._resolve(params, mesh, api=api, optimizer=False)
            problems.extend(found)
        if batch is not None:
            problems.extend(self._batch_problems(batch, sizes, api=api))
        raise_problems(api, problems, context=f" on mesh ({_mesh_text(sizes)})")

    def _batch_problems(self, batch: Any, sizes: Mapping[str, int], *, api: str) -> list[str]:
        axes = [a for a in self.data_axes if a in sizes]
        factors = [(f"{a}={sizes[a]}", sizes[a]) for a in axes]
        pp = self.pipeline_parallel
        if pp is not None:
            factors.append((f"microbatches={pp.microbatches}", pp.microbatches))
        total = math.prod(n for _, n in factors)
        if total == 1:
            return []
        text = " × ".join(t for t, _ in factors)
        problems = []
        for path, leaf in flatten_with_paths(batch)[0]:
            shape, _ = leaf_shape_dtype(leaf, path=path)
            if shape and shape[0] % total:
                problems.append(
                    f"{api}: batch leaf {path!r} with shape {shape} has leading (batch) dim "
                    f"{shape[0]}, not divisible by {text} = {total} (data axes "
                    f"{tuple(axes)!r}{' and microbatches' if pp is not None else ''}). Fix: use "
                    f"a batch size that is a multiple of {total}."
                )
        return problems

    def layout(self, tree: Any, mesh: Mesh, *, specs: Any = None) -> Layout:
        """Per-leaf layout and per-device bytes of ``tree`` under this plan.

        Args:
          tree: parameters (arrays or shapes).
          mesh: the device mesh.
          specs: optional spec tree to describe instead of :meth:`param_specs` — e.g. the
            optimizer state's specs from ``optax.tree_map_params``; then ``tree`` is that state.

        Returns:
          A :class:`Layout` (rows: path, shape, dtype, spec, bytes per device, rule; totals
          per device, share replicated, unmatched paths).

        Raises:
          ShardingError: as :meth:`param_specs`, or a ``specs`` tree that does not fit ``tree``.
        """
        sizes = mesh_sizes(mesh)
        if specs is not None:
            api = "Plan.layout"
            triples, _ = _paired(api, tree, specs)
            checked = _checked(api, mesh, triples)
            return Layout.build(
                [(p, shape, dtype, spec, None) for p, _, spec, shape, dtype in checked], sizes
            )
        api = "Plan.layout"
        leaves, _, problems = self._resolve(tree, mesh, api=api, optimizer=False)
        raise_problems(api, problems, context=f" on mesh ({_mesh_text(sizes)})")
        unmatched = tuple(leaf.path for leaf in leaves if leaf.shape and not leaf.matched)
        return Layout.build(
            [(leaf.path, leaf.shape, leaf.dtype, leaf.spec, leaf.rule) for leaf in leaves],
            sizes,
            unmatched=unmatched,
        )

    def describe(self, tree: Any, mesh: Mesh, *, specs: Any = None) -> str:
        """:meth:`layout` rendered as a text table (``rich``) with totals and unmatched paths.

        Raises:
          ShardingError: as :meth:`layout`.
        """
        return self.layout(tree, mesh, specs=specs).render()

    # -- serialization -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the plan, for configs and checkpoint metadata.

        ``Plan.from_dict(plan.to_dict()) == plan``.
        """
        return plan_to_dict(
            data_parallel=self.data_parallel,
            fsdp=self.fsdp,
            tensor_parallel=self.tensor_parallel,
            pipeline_parallel=self.pipeline_parallel,
            rules=self.rules,
            indivisible=self.indivisible,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Rebuilds a plan from :meth:`to_dict` output (or a hand-written config of that shape).

        Missing sections mean "not used"; ``rules`` may be ``[[glob, spec], ...]`` or a mapping.

        Raises:
          ShardingError: an unknown key, an unknown format, or a value a record rejects.
        """
        return cls(**plan_fields_from_dict(data))

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the canonical JSON of :meth:`to_dict` (stable across runs)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()
