"""Errors of ``titanax.cli``: configuration problems (all at once, each with its location) and
command failures.

Importing ``titanax.mesh`` imports JAX but does not start a backend, so the device count can
still be chosen afterwards (see ``titanax.cli._devices``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from titanax.mesh import TitanaxError

__all__ = ["CLIError", "ConfigError", "Problem"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Problem:
    """One configuration problem.

    Attributes:
      path: dotted field path in the config (``"optimizer.schedule.kwargs"``; ``""`` for the
        whole file).
      message: what is wrong and how to fix it (one line).
      location: where the value came from: ``"config.yaml:12"`` (file and 1-based line),
        ``"--set run.steps=abc"``, or ``None`` for a default value.
    """

    path: str
    message: str
    location: str | None = None

    def line(self) -> str:
        """``"<location>: <path>: <message>"`` (parts that are unknown are left out)."""
        parts = [p for p in (self.location, self.path) if p]
        return ": ".join([*parts, self.message])


class ConfigError(TitanaxError, ValueError):
    """A configuration has one or more problems; ``problems`` lists every one.

    The message is one line per problem, each naming where the value came from (file and line,
    or the ``--set`` override), the field path, what is wrong and the fix — for a misspelled key,
    the closest valid name.

    Args:
      problems: the problems found (at least one).
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(p.line() for p in self.problems))


class CLIError(TitanaxError, RuntimeError):
    """A ``titanax`` command cannot do what was asked (missing run directory, devices that do not
    fit, a JAX backend that already started with another device count, ...)."""
