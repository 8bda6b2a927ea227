"""The JSON-safe form of a ``Plan`` (configs, checkpoint metadata, fingerprints)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from titanax.sharding._errors import ShardingError
from titanax.sharding._parallelisms import DP, FSDP, PP, TP
from titanax.sharding._rules import Rules

__all__ = ["PLAN_FORMAT", "plan_fields_from_dict", "plan_to_dict"]

PLAN_FORMAT = "titanax.sharding.Plan/1"
_SECTIONS: tuple[tuple[str, type], ...] = (
    ("data_parallel", DP),
    ("fsdp", FSDP),
    ("tensor_parallel", TP),
    ("pipeline_parallel", PP),
)


def plan_to_dict(
    *,
    data_parallel: DP | None,
    fsdp: FSDP | None,
    tensor_parallel: TP | None,
    pipeline_parallel: PP | None,
    rules: Rules,
    indivisible: str,
) -> dict[str, Any]:
    """The plan's fields as JSON-safe values (``None`` for an unused parallelism)."""
    dp, tp, pp = data_parallel, tensor_parallel, pipeline_parallel
    return {
        "format": PLAN_FORMAT,
        "data_parallel": None
        if dp is None
        else {"axis": dp.axis, "accumulate_steps": dp.accumulate_steps},
        "fsdp": None
        if fsdp is None
        else {"axis": fsdp.axis, "min_size_bytes": fsdp.min_size_bytes, "zero1": fsdp.zero1},
        "tensor_parallel": None if tp is None else {"axis": tp.axis, "rules": tp.rules.to_list()},
        "pipeline_parallel": None
        if pp is None
        else {
            "axis": pp.axis,
            "stages": pp.stages,
            "microbatches": pp.microbatches,
            "schedule": pp.schedule,
            "virtual_stages": pp.virtual_stages,
            "stacked": list(pp.stacked),
        },
        "rules": rules.to_list(),
        "indivisible": indivisible,
    }


def plan_fields_from_dict(data: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``Plan(...)`` from :func:`plan_to_dict` output.

    Raises:
      ShardingError: not a mapping, an unknown key or field, an unknown format, or a value a
        record rejects.
    """
    if not isinstance(data, Mapping):
        raise ShardingError(f"Plan.from_dict: expected a mapping, got {data!r}.")
    known = {"format", "rules", "indivisible", *(key for key, _ in _SECTIONS)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ShardingError(
            f"Plan.from_dict: unknown keys {unknown}; expected some of {sorted(known)}."
        )
    fmt = data.get("format", PLAN_FORMAT)
    if fmt != PLAN_FORMAT:
        raise ShardingError(
            f"Plan.from_dict: format {fmt!r} is not {PLAN_FORMAT!r}; this plan was written by "
            "an incompatible titanax-sharding."
        )
    fields: dict[str, Any] = {
        "rules": Rules(data.get("rules", ())),
        "indivisible": data.get("indivisible", "raise"),
    }
    for key, kind in _SECTIONS:
        section = data.get(key)
        if section is None:
            continue
        if not isinstance(section, Mapping):
            raise ShardingError(
                f"Plan.from_dict: {key} must be a mapping of {kind.__name__} fields, got "
                f"{section!r}."
            )
        values = dict(section)
        if kind is TP:
            values["rules"] = Rules(values.get("rules", ()))
        if kind is PP and "stacked" in values:
            values["stacked"] = tuple(values["stacked"])
        names = {f.name for f in dataclasses.fields(kind)}
        extra = sorted(set(values) - names)
        if extra:
            raise ShardingError(
                f"Plan.from_dict: {key} has unknown fields {extra}; {kind.__name__} takes "
                f"{sorted(names)}."
            )
        try:
            fields[key] = kind(**values)
        except TypeError as err:
            raise ShardingError(f"Plan.from_dict: {key}: {err}") from None
    return fields
