"""Plain config trees -> the typed records of ``titanax.cli._config``, with every problem located.

The conversion follows the records' type hints: ``int``, ``float`` (ints accepted, and numeric
strings such as YAML 1.1's ``3e-4``), ``str``, ``bool``, ``Literal[...]``, ``X | None``,
``tuple[T, ...]`` (from lists), ``dict[str, Any]``, nested records, and unions of records told
apart by their ``kind`` field. It never stops at the first problem: an unknown key (with the
closest valid name from ``difflib``), a wrong type, a missing required key, and each value a
record's ``__post_init__`` rejects are all collected, each with its path and location. A record
whose only problems are unknown keys is still built (without them), so its values and the checks
across sections still run; the config as a whole is rejected all the same.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import yaml

from titanax.cli._config import Config
from titanax.cli._errors import ConfigError, Problem
from titanax.cli._yaml import UNRESOLVED, Locations, Path, format_path, locate

__all__ = ["closest", "convert_config", "convert_section", "describe_type"]

_MISSING = object()


def closest(name: str, choices: typing.Iterable[str]) -> str | None:
    """The valid name most similar to ``name`` (``difflib``, cutoff 0.6), or ``None``."""
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def describe_type(tp: Any) -> str:
    """A reader's name for a type hint: ``"an int"``, ``"a list of ints"``, ``"one of 'a'"``."""
    if tp is type(None):
        return "null"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an int"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is Any:
        return "any value"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if _is_union(tp):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    if origin is tuple:
        inner = describe_type(typing.get_args(tp)[0])
        return f"a list of {inner.removeprefix('an ').removeprefix('a ')}s"
    if origin is dict:
        return "a mapping"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return str(tp)


def _got(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list {value!r}"
    return f"{type(value).__name__} {value!r}"


class _Converter:
    def __init__(self, locations: Locations) -> None:
        self.locations = locations
        self.problems: list[Problem] = []

    def problem(self, path: Path, message: str) -> None:
        self.problems.append(
            Problem(path=format_path(path), message=message, location=locate(self.locations, path))
        )

    def convert(self, tp: Any, value: Any, path: Path) -> Any:
        """Returns the converted value, or ``_MISSING`` after recording a problem."""
        if value is UNRESOLVED:  # reported when the file was read
            return _MISSING
        if tp is Any:
            return value
        if _is_union(tp):
            return self._union(tp, value, path)
        if dataclasses.is_dataclass(tp):
            return self.record(tp, value, path)  # type: ignore[arg-type]
        origin = typing.get_origin(tp)
        if origin is Literal:
            choices = typing.get_args(tp)
            if value in choices and type(value) is type(choices[0]):
                return value
            hint = closest(value, [str(c) for c in choices]) if isinstance(value, str) else None
            suggestion = f"; did you mean {hint!r}?" if hint else "."
            self.problem(path, f"expected {describe_type(tp)}, got {_got(value)}{suggestion}")
            return _MISSING
        if origin is tuple:
            if not isinstance(value, list | tuple):
                self.problem(path, f"expected {describe_type(tp)}, got {_got(value)}.")
                return _MISSING
            inner = typing.get_args(tp)[0]
            items = [self.convert(inner, v, (*path, i)) for i, v in enumerate(value)]
            return _MISSING if any(i is _MISSING for i in items) else tuple(items)
        if origin is dict:
            if not isinstance(value, Mapping):
                self.problem(path, f"expected a mapping, got {_got(value)}.")
                return _MISSING
            return dict(value)
        return self._scalar(tp, value, path)

    def _scalar(self, tp: Any, value: Any, path: Path) -> Any:
        if tp is type(None):
            if value is None:
                return None
        elif tp is bool:
            if isinstance(value, bool):
                return value
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif tp is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
        elif tp is str and isinstance(value, str):
            return value
        self.problem(path, f"expected {describe_type(tp)}, got {_got(value)}{_quoted(tp, value)}.")
        return _MISSING

    def _union(self, tp: Any, value: Any, path: Path) -> Any:
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            self.problem(path, f"expected {describe_type(tp)}, got null.")
            return _MISSING
        records = [o for o in options if dataclasses.is_dataclass(o)]
        if len(records) > 1 and isinstance(value, Mapping):
            return self._tagged(records, value, path)
        for option in options:
            if option is type(None):
                continue
            trial = _Converter(self.locations)
            out = trial.convert(option, value, path)
            if out is not _MISSING and not trial.problems:
                return out
            if _accepts_shape(option, value):  # the right kind of value: report its problems
                self.problems.extend(trial.problems)
                return out  # a record with unknown keys still converts (see ``record``)
        self.problem(path, f"expected {describe_type(tp)}, got {_got(value)}.")
        return _MISSING

    def _tagged(self, records: list[Any], value: Mapping[str, Any], path: Path) -> Any:
        by_kind = {typing.get_args(_hints(r)["kind"])[0]: r for r in records}
        kind = value.get("kind", next(iter(by_kind)))
        if kind not in by_kind:
            hint = closest(str(kind), by_kind)
            self.problem(
                (*path, "kind"),
                f"unknown kind {kind!r}; expected one of {list(by_kind)}"
                + (f"; did you mean {hint!r}?" if hint else "."),
            )
            return _MISSING
        return self.record(by_kind[kind], value, path)

    def record(self, cls: type, value: Any, path: Path) -> Any:
        if not isinstance(value, Mapping):
            self.problem(path, f"expected {describe_type(cls)}, got {_got(value)}.")
            return _MISSING
        hints = _hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        ok = True
        for key in value:  # reported, then left out: the other fields are still checked
            if key not in fields:
                hint = closest(str(key), fields)
                self.problem(
                    (*path, key),
                    f"unknown key {key!r}"
                    + (f"; did you mean {hint!r}?" if hint else "")
                    + f" (valid keys of {format_path(path) or 'the top level'}: "
                    + ", ".join(fields)
                    + ").",
                )
        kwargs: dict[str, Any] = {}
        for name, field in fields.items():
            if name not in value:
                required = (
                    field.default is dataclasses.MISSING
                    and field.default_factory is dataclasses.MISSING
                )
                if required:
                    self.problem((*path, name), f"missing required key {name!r}.")
                    ok = False
                continue
            out = self.convert(hints[name], value[name], (*path, name))
            if out is _MISSING:
                ok = False
            else:
                kwargs[name] = out
        if not ok:
            return _MISSING
        try:
            return cls(**kwargs)
        except ConfigError as err:
            for problem in err.problems:
                self.problem(
                    (*path, *problem.path.split(".")) if problem.path else path, problem.message
                )
            return _MISSING


def _quoted(tp: Any, value: Any) -> str:
    """A hint for a string that would be ``tp`` without quotes (``"4"``, ``"${STEPS:4}"``)."""
    if not isinstance(value, str) or tp not in (int, bool):
        return ""
    try:
        unquoted = yaml.safe_load(value)
    except yaml.YAMLError:
        return ""
    if type(unquoted) is not tp:
        return ""
    return (
        f" (quoted in the file, so YAML reads a string; remove the quotes: an unquoted "
        f"${{NAME:default}} is read as {describe_type(tp)} after substitution)"
    )


def _accepts_shape(tp: Any, value: Any) -> bool:
    """Whether ``value`` is the right *kind* of value for ``tp`` (mapping, list, scalar)."""
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
        return isinstance(value, Mapping)
    if typing.get_origin(tp) is tuple:
        return isinstance(value, list | tuple)
    return False


def _default_section(name: str) -> Any:
    for field in dataclasses.fields(Config):
        if field.name == name and field.default_factory is not dataclasses.MISSING:
            return field.default_factory()
    raise KeyError(name)


def convert_config(
    tree: Mapping[str, Any], locations: Locations
) -> tuple[Config | None, dict[str, Any], list[Problem]]:
    """Converts a config tree section by section.

    Args:
      tree: from :func:`titanax.cli._yaml.read_yaml` (after overrides).
      locations: where each path came from.

    Returns:
      ``(config, sections, problems)``: ``config`` is ``None`` when there are problems;
      ``sections`` holds every section that converted (defaults for absent ones; a section
      whose only problems are unknown keys, without them), so later checks can still look at
      the good parts.
    """
    converter = _Converter(locations)
    hints = _hints(Config)
    fields = [f.name for f in dataclasses.fields(Config)]
    for key in tree:
        if key not in fields:
            hint = closest(str(key), fields)
            converter.problem(
                (key,),
                f"unknown section {key!r}"
                + (f"; did you mean {hint!r}?" if hint else "")
                + f" (sections: {', '.join(fields)}).",
            )
    sections: dict[str, Any] = {}
    for name in fields:
        if name in tree and tree[name] is not None:
            out = converter.convert(hints[name], tree[name], (name,))
            if out is not _MISSING:
                sections[name] = out
        else:
            sections[name] = _default_section(name)
    if converter.problems or len(sections) != len(fields):
        return None, sections, converter.problems
    return Config(**sections), sections, []


def convert_section(name: str, value: Any, locations: Locations) -> Any | None:
    """Converts one section of a config tree; ``None`` when it has problems (not reported).

    For second looks at a section that did not convert: e.g. the optimizer's kwargs can still be
    checked after the learning rate clashed with the schedule.
    """
    converter = _Converter(locations)
    out = converter.convert(_hints(Config)[name], value, (name,))
    return None if out is _MISSING or converter.problems else out
