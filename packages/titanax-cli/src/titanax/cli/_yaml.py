"""Reading YAML configs with the line of every key, ``${ENV:default}`` and ``--set`` overrides.

The file is parsed with ``yaml.compose`` (safe loading: plain YAML types only, no Python tags) so
every mapping key and list item keeps the line it came from; values are then built with PyYAML's
safe constructor. The result is a plain tree (dicts, lists, scalars) plus a map from each path in
it to where its value came from — ``"config.yaml:12"`` or ``"--set run.steps=5"`` — which is
what configuration errors quote.

Environment substitution: in a string value, ``${NAME}`` is replaced by the variable's value and
``${NAME:default}`` falls back to ``default``; a variable that is not set and has no default is a
problem; ``${NAME:}`` falls back to the empty string. A value that was unquoted in the file is
re-read after substitution, so ``steps: ${STEPS:300}`` gives the int 300 (a quoted
``"${STEPS:300}"`` stays the string ``"300"``, which the schema rejects with a hint to drop the
quotes); a substitution that leaves nothing stays the empty string.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import yaml

from titanax.cli._errors import ConfigError, Problem

__all__ = [
    "UNRESOLVED",
    "Locations",
    "Path",
    "apply_overrides",
    "format_path",
    "locate",
    "read_yaml",
]

Path: TypeAlias = tuple[str | int, ...]
Locations: TypeAlias = dict[Path, str]


class _Unresolved:
    """The value of a ``${NAME}`` whose variable is unset (already reported as a problem)."""

    def __repr__(self) -> str:
        return "<unresolved environment variable>"

    def __deepcopy__(self, memo: dict[int, Any]) -> _Unresolved:
        return self  # one marker, compared by identity


UNRESOLVED = _Unresolved()

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")
_SAFE_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}"
    for t in ("map", "seq", "str", "int", "float", "bool", "null", "timestamp", "binary", "set")
)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def format_path(path: Path) -> str:
    """``("plan", "tp", "rules", "head/kernel")`` -> ``"plan.tp.rules['head/kernel']"``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENT.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def locate(locations: Locations, path: Path) -> str | None:
    """Where ``path`` came from: its own entry, else its nearest ancestor's (``None``: default)."""
    for end in range(len(path), 0, -1):
        found = locations.get(path[:end])
        if found is not None:
            return found
    return None


class _Reader:
    """Builds the plain tree from composed YAML nodes, recording lines and problems."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.locations: Locations = {}
        self.problems: list[Problem] = []
        self._constructor = yaml.SafeLoader("")

    def where(self, node: yaml.Node) -> str:
        return f"{self.source}:{node.start_mark.line + 1}"

    def build(self, node: yaml.Node, path: Path) -> Any:
        if node.tag not in _SAFE_TAGS:
            short = node.tag.replace("tag:yaml.org,2002:", "!!")
            self.problems.append(
                Problem(
                    path=format_path(path),
                    message=f"tag {short!r} is not allowed: configs are plain YAML (safe loading).",
                    location=self.where(node),
                )
            )
            return UNRESOLVED
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self._constructor.construct_object(key_node, deep=True)
                if key == "<<":
                    self.problems.append(
                        Problem(
                            path=format_path(path),
                            message="YAML merge keys (<<) are not supported; write the keys out.",
                            location=self.where(key_node),
                        )
                    )
                    continue
                if not isinstance(key, str):
                    self.problems.append(
                        Problem(
                            path=format_path(path),
                            message=f"key {key!r} is a {type(key).__name__}; keys must be names.",
                            location=self.where(key_node),
                        )
                    )
                    continue
                child = (*path, key)
                if key in result:
                    self.problems.append(
                        Problem(
                            path=format_path(child),
                            message=f"duplicate key (first at {self.locations[child]}); keep one.",
                            location=self.where(key_node),
                        )
                    )
                    continue
                self.locations[child] = self.where(key_node)
                result[key] = self.build(value_node, child)
            return result
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                self.locations[(*path, index)] = self.where(item)
                items.append(self.build(item, (*path, index)))
            return items
        try:
            value = self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError) as err:
            self.problems.append(
                Problem(
                    path=format_path(path),
                    message=f"cannot read this value: {' '.join(str(err).split())}",
                    location=self.where(node),
                )
            )
            return UNRESOLVED
        if isinstance(value, str) and "${" in value:
            value = self._substitute(value, node, path)
        return value

    def _substitute(self, text: str, node: yaml.Node, path: Path) -> Any:
        missing: list[str] = []

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = os.environ.get(name)
            if value is not None:
                return value
            if default is not None:
                return default
            missing.append(name)
            return match.group(0)

        result = _ENV.sub(replace, text)
        if missing:
            for name in missing:
                self.problems.append(
                    Problem(
                        path=format_path(path),
                        message=(
                            f"environment variable {name!r} is not set and ${{{name}}} has no "
                            f"default; export {name}=... or write ${{{name}:default}}."
                        ),
                        location=self.where(node),
                    )
                )
            return UNRESOLVED
        if isinstance(node, yaml.ScalarNode) and node.style is None and result.strip():
            try:
                reread = yaml.safe_load(result)
            except yaml.YAMLError:
                return result
            if reread is None or isinstance(reread, bool | int | float | str):
                return reread
        return result


def read_yaml(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Any], Locations, list[Problem]]:
    """Reads a YAML config file into a plain tree and the location of every key.

    Args:
      path: the YAML file.

    Returns:
      ``(tree, locations, problems)``: ``tree`` a dict of plain values; ``locations`` maps
      every key path (and list item) to ``"<file>:<line>"``; ``problems`` the keys that repeat
      or are not strings and the environment variables that are unset without default (their
      values are :data:`UNRESOLVED`), each with its file and line.

    Raises:
      ConfigError: the file is missing or not valid YAML, or its top level is not a mapping.
    """
    source = os.fspath(path)
    file = pathlib.Path(source)
    if not file.is_file():
        raise ConfigError(
            [Problem(path="", message=f"config file {source!r} does not exist.", location=None)]
        )
    text = file.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(
            [Problem(path="", message=f"not valid YAML: {problem}.", location=where)]
        ) from None
    if node is None:
        return {}, {}, []
    reader = _Reader(source)
    tree = reader.build(node, ())
    if not isinstance(tree, dict):
        raise ConfigError(
            [
                Problem(
                    path="",
                    message="the top level must be a mapping of sections (run:, mesh:, plan:, "
                    "...).",
                    location=reader.where(node),
                )
            ]
        )
    return tree, reader.locations, reader.problems


def _split_key(key: str) -> Path:
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def _forget(locations: Locations, path: Path) -> None:
    for known in [k for k in locations if k[: len(path)] == path]:
        del locations[known]


def _record(locations: Locations, path: Path, value: Any, where: str) -> None:
    locations[path] = where
    if isinstance(value, Mapping):
        for key, child in value.items():
            _record(locations, (*path, str(key)), child, where)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _record(locations, (*path, index), child, where)


def apply_overrides(
    tree: dict[str, Any], locations: Locations, overrides: Sequence[str]
) -> tuple[dict[str, Any], Locations]:
    """Applies ``--set key.path=value`` overrides (values read as YAML: ``3``, ``[4, 2]``).

    Missing intermediate mappings are created; list items are addressed by index
    (``mesh.shape.1=2``). Types are checked later, with the config schema, and problems quote
    the override.

    Args:
      tree: the config tree from :func:`read_yaml` (not modified).
      locations: its locations (not modified).
      overrides: ``"key.path=value"`` strings, applied in order.

    Returns:
      The new ``(tree, locations)``.

    Raises:
      ConfigError: an override without ``=``, with an empty key, with a value that is not valid
        YAML, or that indexes through a scalar — all of them at once.
    """
    import copy

    tree = copy.deepcopy(tree)
    locations = dict(locations)
    problems: list[Problem] = []
    for item in overrides:
        where = f"--set {item}"
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            problems.append(
                Problem(path=key, message="expected --set key.path=value.", location=where)
            )
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            problems.append(
                Problem(
                    path=key,
                    message=f"the value is not valid YAML: {' '.join(str(err).split())}",
                    location=where,
                )
            )
            continue
        path = _split_key(key)
        node: Any = tree
        ok = True
        for depth, part in enumerate(path[:-1]):
            here = path[: depth + 1]
            if isinstance(node, list) and isinstance(part, int):
                if not 0 <= part < len(node):
                    problems.append(
                        Problem(
                            path=format_path(here),
                            message=f"index {part} is outside the list of {len(node)} items.",
                            location=where,
                        )
                    )
                    ok = False
                    break
                node = node[part]
                continue
            if not isinstance(node, dict):
                problems.append(
                    Problem(
                        path=format_path(here),
                        message="cannot set a key inside a value that is not a mapping.",
                        location=where,
                    )
                )
                ok = False
                break
            name = str(part)
            if node.get(name) is None:
                node[name] = {}
                locations[(*path[:depth], name)] = where
            elif not isinstance(node[name], dict | list):
                problems.append(
                    Problem(
                        path=format_path(here),
                        message="cannot set a key inside a value that is not a mapping.",
                        location=where,
                    )
                )
                ok = False
                break
            node = node[name]
        if not ok:
            continue
        last = path[-1]
        if isinstance(node, list) and isinstance(last, int) and 0 <= last < len(node):
            node[last] = value
        elif isinstance(node, dict):
            last = str(last)
            node[last] = value
        else:
            problems.append(
                Problem(
                    path=format_path(path),
                    message="cannot set this item: its parent is not a mapping (or the index is "
                    "outside the list).",
                    location=where,
                )
            )
            continue
        full = (*path[:-1], last)
        _forget(locations, full)
        _record(locations, full, value, where)
    if problems:
        raise ConfigError(problems)
    return tree, locations
