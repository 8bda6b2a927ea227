"""``Rules``: ordered path globs -> PartitionSpecs, and their resolution over a pytree.

Matching and precedence (deterministic, documented once here):

* A pattern matches a path when ``fnmatch.fnmatchcase`` matches the whole path, or the part of the
  path after one of its ``"/"`` — so rules written for a parameter tree also match the same
  parameters under a prefix, such as Linen's ``"params/"`` or an optimizer state's ``"0/mu/"``.
  ``*`` matches any characters, ``"/"`` included (``fnmatch`` semantics); ``**`` is not special
  and is rejected. A prefix match counts exactly as if the pattern were written ``"*/" + pattern``.
* The most specific matching rule wins: the fewest wildcards (each ``*``, ``?`` and ``[...]``
  counts one), then the longest pattern. Two equally specific matches that disagree raise; if
  they agree, either gives the same spec.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from jax.sharding import Mesh, PartitionSpec

from titanax.sharding._errors import ShardingError
from titanax.sharding._paths import flatten_with_paths, leaf_shape_dtype
from titanax.sharding._specs import (
    Indivisible,
    SpecLike,
    check_spec,
    format_spec,
    mesh_sizes,
    raise_problems,
    to_spec,
)

__all__ = ["Rules", "build_param_specs", "glob_specificity", "spec_for"]

_REPLICATED = PartitionSpec()


def _wildcards(pattern: str) -> int:
    count, i, n = 0, 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char in "*?":
            count += 1
        elif char == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j < n:
                count += 1
                i = j
        i += 1
    return count


def glob_specificity(pattern: str, path: str) -> tuple[int, int] | None:
    """``(wildcards, length)`` of ``pattern`` as it matches ``path``; ``None`` if it does not.

    Lower wildcards, then greater length, is more specific. A match after a ``"/"`` of the path
    counts as the pattern ``"*/" + pattern``.
    """
    if fnmatch.fnmatchcase(path, pattern):
        return _wildcards(pattern), len(pattern)
    if fnmatch.fnmatchcase(path, "*/" + pattern):
        return _wildcards(pattern) + 1, len(pattern) + 2
    return None


def _check_pattern(pattern: Any) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise ShardingError(
            f"Rules: pattern {pattern!r} must be a non-empty path glob such as "
            "'blocks/*/attn/q/kernel'."
        )
    if "**" in pattern:
        raise ShardingError(
            f"Rules: pattern {pattern!r} contains '**'; patterns use fnmatch semantics where '*' "
            "already matches across '/'. Write a single '*'."
        )
    return pattern


class Rules:
    """An immutable, ordered mapping from path globs to PartitionSpecs.

    Specs may be given as ``PartitionSpec`` or as tuples/lists of entries, as they come from YAML
    (``["tensor", null]``; a nested list shards one dim over several axes). See the module
    docstring for matching and precedence: the most specific match wins (fewest wildcards, then
    the longest pattern); two equally specific matches that disagree raise ``ShardingError``.

    Args:
      rules: a mapping ``{glob: spec}`` or an iterable of ``(glob, spec)`` pairs. A pattern given
        twice with the same spec is kept once.

    Raises:
      ShardingError: an empty or non-string pattern, a pattern containing ``**``, a spec entry
        that is not ``None``/an axis name/a tuple of names, or one pattern given twice with
        different specs.

    Example:
      >>> from jax.sharding import PartitionSpec as P
      >>> rules = Rules({"blocks/*/mlp/up/kernel": P(None, "tensor"), "*/bias": [None]})
      >>> rules.match("blocks/3/mlp/up/kernel")
      ('blocks/*/mlp/up/kernel', P(None, 'tensor'))
    """

    __slots__ = ("_items",)
    _items: tuple[tuple[str, PartitionSpec], ...]

    def __init__(
        self, rules: Mapping[str, SpecLike] | Iterable[tuple[str, SpecLike]] | Rules = ()
    ) -> None:
        if isinstance(rules, Rules):
            pairs: list[Any] = list(rules.items())
        elif isinstance(rules, Mapping):
            pairs = list(rules.items())
        elif isinstance(rules, str | bytes) or not isinstance(rules, Iterable):
            raise ShardingError(
                f"Rules: expected a mapping {{glob: spec}} or (glob, spec) pairs, got {rules!r}."
            )
        else:
            pairs = list(rules)
        items: dict[str, PartitionSpec] = {}
        for pair in pairs:
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise ShardingError(
                    f"Rules: {pair!r} is not a (glob, spec) pair, e.g. "
                    "('blocks/*/attn/q/kernel', P(None, 'tensor'))."
                )
            pattern = _check_pattern(pair[0])
            spec = to_spec(pair[1], what=f"Rules: pattern {pattern!r}")
            if pattern in items and items[pattern] != spec:
                raise ShardingError(
                    f"Rules: pattern {pattern!r} is given twice with different specs "
                    f"{format_spec(items[pattern])} and {format_spec(spec)}; keep one. To "
                    "override preset rules, put the override in Plan(rules=...), which is "
                    "consulted before the tensor-parallel rules."
                )
            items[pattern] = spec
        object.__setattr__(self, "_items", tuple(items.items()))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Rules is immutable; combine rules with `|`.")

    def __reduce__(self) -> tuple[type[Rules], tuple[list[tuple[str, PartitionSpec]]]]:
        return Rules, (list(self._items),)

    def items(self) -> tuple[tuple[str, PartitionSpec], ...]:
        """The ``(glob, PartitionSpec)`` pairs, in the order given."""
        return self._items

    def patterns(self) -> tuple[str, ...]:
        """The globs, in the order given."""
        return tuple(p for p, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.patterns())

    def __bool__(self) -> bool:
        return bool(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rules) and self._items == other._items

    def __hash__(self) -> int:
        return hash(tuple((p, tuple(s)) for p, s in self._items))

    def __repr__(self) -> str:
        body = ", ".join(f"{p!r}: {format_spec(s)}" for p, s in self._items)
        return f"Rules({{{body}}})"

    def __or__(self, other: Rules | Mapping[str, SpecLike]) -> Rules:
        """Concatenation: ``other``'s rules appended after this one's.

        Raises:
          ShardingError: a pattern present in both with different specs.
        """
        if not isinstance(other, Rules | Mapping):
            return NotImplemented
        return Rules([*self._items, *Rules(other).items()])

    def match(self, path: str, *, api: str = "Rules.match") -> tuple[str, PartitionSpec] | None:
        """The most specific ``(glob, spec)`` matching ``path``, or ``None``.

        Raises:
          ShardingError: two equally specific rules match ``path`` with different specs.
        """
        best: tuple[int, int] | None = None
        winners: list[tuple[str, PartitionSpec]] = []
        for pattern, spec in self._items:
            key = glob_specificity(pattern, path)
            if key is None:
                continue
            rank = (key[0], -key[1])
            if best is None or rank < best:
                best, winners = rank, [(pattern, spec)]
            elif rank == best:
                winners.append((pattern, spec))
        if not winners:
            return None
        disagree = [w for w in winners if w[1] != winners[0][1]]
        if disagree and best is not None:
            listed = " and ".join(f"{p!r} -> {format_spec(s)}" for p, s in winners)
            raise ShardingError(
                f"{api}: path {path!r} is matched by rules {listed}, which are equally specific "
                f"({best[0]} wildcards, {-best[1]} characters) but disagree. Fix: make one "
                "pattern more specific (fewer wildcards or longer), or give them the same spec."
            )
        return winners[0]

    def to_list(self) -> list[list[Any]]:
        """JSON-safe ``[[glob, [entry, ...]], ...]``; ``Rules(rules.to_list()) == rules``."""
        return [[p, [list(e) if isinstance(e, tuple) else e for e in s]] for p, s in self._items]


def _as_rules(rules: Rules | Mapping[str, SpecLike] | Iterable[tuple[str, SpecLike]]) -> Rules:
    return rules if isinstance(rules, Rules) else Rules(rules)


def _check_indivisible(api: str, indivisible: Any) -> Indivisible:
    if indivisible not in ("raise", "replicate"):
        raise ShardingError(
            f"{api}: indivisible={indivisible!r} must be 'raise' (default) or 'replicate'."
        )
    return indivisible  # type: ignore[no-any-return]


def _resolve_leaf(
    api: str,
    path: str,
    shape: tuple[int, ...],
    rules: Rules,
    default: PartitionSpec,
    sizes: dict[str, int] | None,
    indivisible: Indivisible,
) -> tuple[PartitionSpec, list[str]]:
    if not shape:
        return PartitionSpec(), []
    try:
        found = rules.match(path, api=api)
    except ShardingError as err:
        return PartitionSpec(), [str(err)]
    spec, origin = (found[1], f"rule {found[0]!r}") if found else (default, "the default spec")
    return check_spec(
        spec, api=api, path=path, shape=shape, origin=origin, sizes=sizes, indivisible=indivisible
    )


def spec_for(
    path: str,
    shape: tuple[int, ...],
    rules: Rules | Mapping[str, SpecLike],
    *,
    mesh: Mesh | None = None,
    default: SpecLike = _REPLICATED,
    indivisible: Indivisible = "raise",
) -> PartitionSpec:
    """Resolves the PartitionSpec of one parameter from its path and shape.

    Rank-0 shapes (optimizer counts, step, loss scale) always give ``P()``, whatever a catch-all
    rule says. Otherwise the most specific matching rule's spec is checked against the shape —
    and, given ``mesh``, against the mesh's axes and sizes.

    Args:
      path: ``"/"``-joined parameter path, e.g. ``"blocks/0/attn/q/kernel"``.
      shape: the parameter's global shape.
      rules: the rules to match.
      mesh: when given, axes must exist and divide their dims.
      default: spec for a path no rule matches (replicated ``P()`` unless given).
      indivisible: ``"raise"`` (default) or ``"replicate"``: replicate a dim that does not divide
        over its axes and log one warning for the path.

    Returns:
      The ``PartitionSpec`` for the parameter.

    Raises:
      ShardingError: a spec longer than the rank, an unknown mesh axis, an axis used twice, an
        indivisible dim (unless ``indivisible="replicate"``), or an equally specific tie — the
        message names the path, shape, dim, axis and its size, and the rule.

    Example:
      >>> from jax.sharding import PartitionSpec as P
      >>> spec_for("head/kernel", (64, 256), Rules({"head/kernel": P(None, "tensor")}))
      P(None, 'tensor')
    """
    api = "spec_for"
    indivisible = _check_indivisible(api, indivisible)
    shape = tuple(int(d) for d in shape)
    sizes = mesh_sizes(mesh) if mesh is not None else None
    spec, problems = _resolve_leaf(
        api, path, shape, _as_rules(rules), to_spec(default, what=api), sizes, indivisible
    )
    raise_problems(api, problems)
    return spec


def build_param_specs(
    tree: Any,
    rules: Rules | Mapping[str, SpecLike],
    *,
    default: SpecLike = _REPLICATED,
    mesh: Mesh | None = None,
    indivisible: Indivisible = "raise",
) -> Any:
    """Resolves a PartitionSpec for every leaf of ``tree`` from path-glob rules.

    Paths are the leaves' key paths joined with ``"/"`` (:func:`tree_paths`). The most specific
    matching rule wins (fewest wildcards, then longest pattern); ties that disagree raise.
    Scalars always resolve to ``P()``. Every leaf is checked; all problems are reported together.

    Args:
      tree: pytree of ``jax.Array``, ``np.ndarray`` or ``jax.ShapeDtypeStruct`` (anything with
        ``.shape``); Flax NNX ``State`` and Linen dicts included.
      rules: ordered mapping ``glob -> PartitionSpec``.
      default: spec for leaves no rule matches (replicated unless given).
      mesh: when given, axes must exist in it and divide their dims.
      indivisible: ``"raise"`` (default) or ``"replicate"`` (replicate the dim, warn once per
        path).

    Returns:
      A pytree with the structure of ``tree`` whose leaves are ``PartitionSpec``.

    Raises:
      ShardingError: listing every spec longer than its leaf's rank, unknown mesh axis, axis
        used twice in one spec, indivisible dim, and disagreeing tie — each naming the path,
        shape, dim, axis and its size, and the rule.

    Example:
      >>> import numpy as np
      >>> from jax.sharding import PartitionSpec as P
      >>> params = {"embed": np.zeros((32, 8)), "step": np.int32(0)}
      >>> build_param_specs(params, Rules({"*": P("tensor")}))
      {'embed': P('tensor',), 'step': P()}
    """
    api = "build_param_specs"
    indivisible = _check_indivisible(api, indivisible)
    rules = _as_rules(rules)
    default_spec = to_spec(default, what=api)
    sizes = mesh_sizes(mesh) if mesh is not None else None
    pairs, treedef = flatten_with_paths(tree)
    specs: list[PartitionSpec] = []
    problems: list[str] = []
    for path, leaf in pairs:
        shape, _ = leaf_shape_dtype(leaf, path=path)
        spec, found = _resolve_leaf(api, path, shape, rules, default_spec, sizes, indivisible)
        specs.append(spec)
        problems.extend(found)
    raise_problems(api, problems)
    return treedef.unflatten(specs)
