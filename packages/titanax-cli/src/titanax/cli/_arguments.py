"""Checking YAML ``kwargs`` against the signature of the optax function they are passed to.

``optimizer.kwargs`` and ``optimizer.schedule.kwargs`` go to ``optax.<name>(**kwargs)``. A
misspelled name or a string where a number belongs would otherwise surface as a ``TypeError``
deep inside optax (or at the first training step). :func:`check_kwargs` reads the function's
``inspect.signature``: unknown names get the closest valid one (``difflib``), required
arguments that are missing are named, and arguments whose annotation (or default) is numeric
or boolean get a value of that kind. Numeric strings — YAML 1.1 reads ``1e-4`` as a string —
become numbers.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias, Union

from titanax.cli._convert import closest

__all__ = ["check_kwargs"]

_Kind: TypeAlias = Literal["int", "number", "bool"]
_EXPECTED = {"int": "an int", "number": "a number", "bool": "true or false"}


def _members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return tuple(m for arg in typing.get_args(annotation) for m in _members(arg))
    return (annotation,)


def _kind(parameter: inspect.Parameter) -> tuple[_Kind | None, bool]:
    """``(kind, nullable)`` of a parameter's values; ``kind`` ``None``: not checked."""
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        default = parameter.default
        if isinstance(default, bool):
            return "bool", False
        if isinstance(default, int | float):
            return "number", False
        return None, True
    members = _members(annotation)
    nullable = type(None) in members or parameter.default is None
    if any(m is Any or m is str for m in members):
        return None, True
    if all(m in (bool, type(None)) for m in members):
        return "bool", nullable
    if all(m in (int, type(None)) for m in members):
        return "int", nullable
    if any(m in (int, float) for m in members):
        return "number", nullable
    return None, True


def _coerce(kind: _Kind, value: Any) -> tuple[bool, Any]:
    """``(ok, value)``: the value as ``kind`` (numeric strings and integral floats converted)."""
    if kind == "bool":
        return isinstance(value, bool), value
    if isinstance(value, bool):
        return False, value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False, value
    if not isinstance(value, int | float):
        return False, value
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            return False, value
        return True, int(value)
    return True, value


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {value!r}"


def check_kwargs(
    function: Callable[..., Any],
    kwargs: Mapping[str, Any],
    *,
    call: str,
    field: str,
    add: Callable[[tuple[str, ...], str], None],
    passed: Sequence[str] = (),
) -> dict[str, Any] | None:
    """Checks ``kwargs`` of ``function`` and returns them converted.

    Args:
      function: the optax function (``optax.adamw``, ``optax.warmup_cosine_decay_schedule``).
      kwargs: the keyword arguments from the config.
      call: how the call reads in messages (``"optax.adamw"``).
      field: the config path of ``kwargs`` (``"optimizer.kwargs"``), for messages.
      add: ``add(path, message)`` records a problem at ``path`` (relative to ``kwargs``:
        ``("b1",)``; ``()`` for the mapping as a whole).
      passed: arguments the CLI passes itself (``learning_rate``): not needed from ``kwargs``.

    Returns:
      The kwargs with numeric strings converted, or ``None`` after recording problems.
    """
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # no signature to check against: optax will
        return dict(kwargs)
    parameters = {
        name: p
        for name, p in signature.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    valid = [n for n in parameters if n not in passed]
    out: dict[str, Any] = {}
    ok = True
    for name, value in kwargs.items():
        parameter = parameters.get(name)
        if parameter is None or name in passed:
            if open_ended and name not in passed:
                out[name] = value
                continue
            hint = closest(name, valid)
            add(
                (name,),
                f"{call} has no argument {name!r}"
                + (f"; did you mean {hint!r}?" if hint else "")
                + f" ({call} takes: {', '.join(valid) or 'nothing else'}).",
            )
            ok = False
            continue
        kind, nullable = _kind(parameter)
        if kind is None or (value is None and nullable):
            out[name] = value
            continue
        good, converted = _coerce(kind, value)
        if not good:
            default = (
                ""
                if parameter.default is inspect.Parameter.empty
                else f" (default {parameter.default!r})"
            )
            add(
                (name,),
                f"{call}'s argument {name} expects {_EXPECTED[kind]}"
                + (" or null" if nullable else "")
                + f"{default}, got {_shown(value)}; write e.g. {name}: "
                + f"{_example(kind, parameter.default)}.",
            )
            ok = False
            continue
        out[name] = converted
    missing = [
        n
        for n, p in parameters.items()
        if p.default is inspect.Parameter.empty and n not in kwargs and n not in passed
    ]
    if missing:
        add(
            (),
            f"{call} needs {', '.join(missing)}: add "
            + ", ".join(f"{n}: ..." for n in missing)
            + f" to {field}.",
        )
        ok = False
    return out if ok else None


def _example(kind: _Kind, default: Any) -> str:
    if default is not inspect.Parameter.empty and default is not None:
        return str(default).lower() if isinstance(default, bool) else repr(default)
    return {"int": "100", "number": "0.1", "bool": "true"}[kind]
