"""Loading a config: YAML file + ``--set`` overrides -> typed :class:`~titanax.cli.Config`.

:func:`load_config` is the public entry point (raises one :class:`~titanax.cli.ConfigError`
listing every schema problem). :func:`read_config` keeps the partial result — the sections that
converted, the location of every key and the problems — for ``titanax validate``, which goes on
checking the good sections against each other and against the devices.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import yaml

from titanax.cli._config import Config
from titanax.cli._convert import convert_config
from titanax.cli._errors import ConfigError, Problem
from titanax.cli._yaml import Locations, apply_overrides, read_yaml

__all__ = ["LoadedConfig", "load_config", "read_config", "save_config", "sort_problems"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadedConfig:
    """A config as read, with whatever problems it has.

    Attributes:
      source: the YAML file.
      config: the typed config (``None`` when there are problems).
      sections: every section that converted cleanly (defaults for absent ones).
      locations: where each config path came from (``"file:line"`` or ``"--set ..."``).
      problems: the schema problems, in file order.
      tree: the plain tree after overrides (what the sections were converted from).
    """

    source: str
    config: Config | None
    sections: dict[str, Any]
    locations: Locations
    problems: tuple[Problem, ...]
    tree: dict[str, Any] = dataclasses.field(default_factory=dict)


_LINE = re.compile(r":(\d+)$")


def sort_problems(problems: Sequence[Problem]) -> list[Problem]:
    """File problems by line, then ``--set`` problems, then the rest; otherwise stable."""

    def key(problem: Problem) -> tuple[int, int]:
        where = problem.location or ""
        match = _LINE.search(where)
        if match and not where.startswith("--set"):
            return 0, int(match.group(1))
        return (1, 0) if where.startswith("--set") else (2, 0)

    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=key)


def read_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> LoadedConfig:
    """Reads ``path``, applies ``overrides`` and converts what it can.

    Raises:
      ConfigError: only for problems that leave nothing to convert (missing file, invalid
        YAML, bad overrides); schema problems are returned in ``problems``.
    """
    tree, locations, found = read_yaml(path)
    tree, locations = apply_overrides(tree, locations, overrides)
    config, sections, problems = convert_config(tree, locations)
    problems = [*found, *problems]
    if found:
        config = None
    return LoadedConfig(
        source=os.fspath(path),
        config=config,
        sections=sections,
        locations=locations,
        problems=tuple(sort_problems(problems)),
        tree=tree,
    )


def load_config(path: str | os.PathLike[str], *, overrides: Sequence[str] = ()) -> Config:
    """Loads a YAML config into a :class:`~titanax.cli.Config`.

    Safe loading only (plain YAML types). ``${NAME}`` and ``${NAME:default}`` in string values
    are replaced from the environment; ``overrides`` are ``"key.path=value"`` strings applied
    after the file (values read as YAML). Every key must be a field of the schema: a misspelled
    key is reported with its line and the closest valid name.

    Args:
      path: the YAML file.
      overrides: ``--set`` style overrides, applied in order.

    Returns:
      The typed, validated config.

    Raises:
      ConfigError: listing every problem, one line each: ``"<file>:<line>: <field path>:
        <what is wrong and the fix>"``.

    Example:
      >>> config = load_config("examples/configs/gpt_small_tp.yaml", overrides=["run.steps=10"])
      >>> config.run.steps
      10
    """
    loaded = read_config(path, overrides)
    if loaded.problems or loaded.config is None:
        raise ConfigError(loaded.problems)
    return loaded.config


def save_config(config: Config, path: str | os.PathLike[str]) -> pathlib.Path:
    """Writes the resolved config as YAML (``load_config`` of the file gives ``config`` back)."""
    out = pathlib.Path(os.fspath(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "# Resolved titanax config (environment variables and --set overrides applied).\n"
    text += yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out


def require(loaded: LoadedConfig) -> Config:
    """The config of ``loaded``, or its problems raised as one :class:`ConfigError`."""
    if loaded.problems or loaded.config is None:
        raise ConfigError(loaded.problems)
    return loaded.config
