"""Checks across config sections that need no JAX: mode vs plan, plan vs mesh, rules, batch, and
the directories a run writes (``run.dir``, ``checkpoint.dir``, ``data.cache_dir``).

Each check reports a :class:`~titanax.cli.Problem` at the most specific place it can (the rule's
line, the plan section that contradicts the mode, ``mesh.shape``); checks that need devices,
parameter shapes or optax run later, in :mod:`titanax.cli._build`.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import yaml

from titanax.cli._config import (
    GPTModel,
    MeshConfig,
    Mode,
    PlanConfig,
    token_geometry,
)
from titanax.cli._convert import closest
from titanax.cli._errors import Problem
from titanax.cli._yaml import Locations, Path, format_path, locate

__all__ = ["directory_problem", "infer_mode", "static_problems"]

_MODE_TEXT = {
    "dp": "data parallel in the per-device view (explicit gradient pmean)",
    "tp": "the global view with data / fsdp / tensor axes",
    "pp": "pipeline stages (titanax.pipeline) composed with data parallelism",
}
_TOKEN_SOURCES = ("stdlib_bytes", "synthetic")
_IMAGE_SOURCES = ("digits", "mnist_idx", "synthetic")


def infer_mode(plan: PlanConfig) -> Mode:
    """The mode a plan implies when neither the command nor ``run.mode`` names one."""
    if plan.pp is not None:
        return "pp"
    if plan.tp is not None or plan.fsdp is not None:
        return "tp"
    return "dp"


class _Report:
    def __init__(self, locations: Locations) -> None:
        self.locations = locations
        self.problems: list[Problem] = []

    def add(self, path: Path, message: str) -> None:
        self.problems.append(
            Problem(path=format_path(path), message=message, location=locate(self.locations, path))
        )


def _mode_problems(report: _Report, mode: Mode, command: Mode | None, sections: Any) -> None:
    run, plan = sections.get("run"), sections.get("plan")
    if command is not None and run is not None and run.mode is not None and run.mode != command:
        report.add(
            ("run", "mode"),
            f"the config says mode {run.mode!r} but the command is `titanax run {command}`; run "
            f"`titanax run {run.mode}` or change run.mode.",
        )
    if plan is None:
        return
    where = f"mode {mode!r} ({_MODE_TEXT[mode]})"
    if mode == "dp":
        for name in ("fsdp", "tp", "pp"):
            if getattr(plan, name) is not None:
                other = "pp" if name == "pp" else "tp"
                report.add(
                    ("plan", name),
                    f"{where} contradicts plan.{name}: the dp recipe replicates the parameters. "
                    f"Use `titanax run {other}` for this plan, or remove plan.{name}.",
                )
        if plan.dp is None:
            report.add(("plan",), f"{where} needs plan.dp (the data axis to average over).")
    elif mode == "tp":
        if plan.pp is not None:
            report.add(
                ("plan", "pp"),
                f"{where} contradicts plan.pp (a pipeline plan); use `titanax run pp`, or remove "
                "plan.pp.",
            )
    elif plan.pp is None:
        report.add(("plan",), f"{where} needs plan.pp (stages, microbatches, schedule).")
    model = sections.get("model")
    if mode == "pp" and plan.dp is not None and plan.dp.accumulate_steps > 1:
        report.add(
            ("plan", "dp", "accumulate_steps"),
            f"{where} already splits the batch into plan.pp.microbatches; use microbatches "
            "instead of accumulate_steps.",
        )
    if mode == "pp" and isinstance(model, GPTModel) and model.dropout > 0:
        report.add(
            ("model", "dropout"),
            f"{where} runs the GPT without dropout (the pipeline recomputes stage forwards); "
            "use dropout: 0.0.",
        )
    if mode == "pp" and model is not None and not isinstance(model, GPTModel):
        report.add(
            ("model", "kind"),
            f"{where} splits the GPT's stacked blocks into stages; model kind "
            f"{model.kind!r} has none. Use kind: gpt, or `titanax run dp`.",
        )


def _spec_axes(spec: Any) -> list[str] | None:
    """Axis names of a YAML spec (``[null, tensor]``, ``[[data, fsdp], null]``); None: malformed."""
    if spec is None:
        return []
    if not isinstance(spec, list):  # a bare string is ambiguous: [tensor] or [null, tensor]?
        return None
    names: list[str] = []
    for entry in spec:
        if entry is None:
            continue
        if isinstance(entry, str):
            names.append(entry)
        elif isinstance(entry, list) and all(isinstance(e, str) for e in entry):
            names.extend(entry)
        else:
            return None
    return names


def _yaml_text(value: Any) -> str:
    """``[null, tensor]`` rather than Python's ``[None, 'tensor']``."""
    return (
        str(yaml.safe_dump(value, default_flow_style=True, width=10_000))
        .strip()
        .removesuffix("\n...")
    )


def _rule_problems(
    report: _Report, rules: Mapping[str, Any], path: Path, mesh: MeshConfig | None
) -> None:
    for glob, spec in rules.items():
        where = (*path, glob)
        names = _spec_axes(spec)
        if names is None:
            report.add(
                where,
                f"spec {_yaml_text(spec)} is not a PartitionSpec; write a list with one entry "
                "per dim: null, an axis name, or a list of axis names (e.g. [null, tensor]).",
            )
            continue
        if mesh is None:
            continue
        for name in names:
            if name not in mesh.axes:
                hint = closest(name, mesh.axes)
                report.add(
                    where,
                    f"rule {glob!r} -> {_yaml_text(spec)} names mesh axis {name!r}, which is not "
                    f"in mesh.axes {list(mesh.axes)}"
                    + (f"; did you mean {hint!r}?" if hint else "; add it to the mesh."),
                )


def _plan_mesh_problems(
    report: _Report, plan: PlanConfig, mesh: MeshConfig | None, sizes: Mapping[str, int] | None
) -> None:
    seen: dict[str, str] = {}
    for name, axis in plan.roles():
        if mesh is not None and axis not in mesh.axes:
            hint = closest(axis, mesh.axes)
            report.add(
                ("plan", name, "axis"),
                f"axis {axis!r} is not in mesh.axes {list(mesh.axes)}"
                + (f"; did you mean {hint!r}?" if hint else "; add it to the mesh."),
            )
        if axis in seen:
            report.add(
                ("plan", name, "axis"),
                f"mesh axis {axis!r} already carries plan.{seen[axis]}; each parallelism needs "
                "its own axis (size 1 is fine).",
            )
        seen.setdefault(axis, name)
    if plan.tp is not None and isinstance(plan.tp.rules, Mapping):
        _rule_problems(report, plan.tp.rules, ("plan", "tp", "rules"), mesh)
    _rule_problems(report, plan.rules, ("plan", "rules"), mesh)
    pp = plan.pp
    if pp is not None and sizes is not None and pp.axis in sizes and sizes[pp.axis] != pp.stages:
        report.add(
            ("plan", "pp", "stages"),
            f"stages={pp.stages} but mesh axis {pp.axis!r} has size {sizes[pp.axis]}; each device "
            f"along it runs one stage. Set stages: {sizes[pp.axis]} or resize the axis.",
        )
    if pp is not None and pp.schedule != "gpipe" and pp.microbatches < pp.stages:
        report.add(
            ("plan", "pp", "microbatches"),
            f"{pp.schedule} needs microbatches >= stages ({pp.microbatches} < {pp.stages}); "
            f"use microbatches: {pp.stages} or more, or schedule: gpipe.",
        )


def _mesh_problems(
    report: _Report, mesh: MeshConfig, num_devices: int | None, devices_from: str
) -> dict[str, int] | None:
    if num_devices is None:
        return mesh.sizes(None)
    known = math.prod(s for s in mesh.shape if s != -1)
    divisors = [d for d in range(1, num_devices + 1) if num_devices % d == 0]
    if -1 in mesh.shape and num_devices % known:
        report.add(
            ("mesh", "shape"),
            f"{list(mesh.shape)} cannot fill {devices_from}: the fixed "
            f"sizes multiply to {known}, which does not divide {num_devices}. Use sizes whose "
            f"product divides {num_devices} (divisors: {divisors}).",
        )
        return None
    if -1 not in mesh.shape and known != num_devices:
        report.add(
            ("mesh", "shape"),
            f"{list(mesh.shape)} multiplies to {known}, but the mesh must use all "
            f"{devices_from}. Make the product {num_devices}, or put -1 in one axis.",
        )
        return None
    return mesh.sizes(num_devices)


def _data_problems(report: _Report, sections: Any, sizes: Mapping[str, int] | None) -> None:
    model, data, plan = sections.get("model"), sections.get("data"), sections.get("plan")
    if model is not None and data is not None:
        tokens_of = token_geometry(model)
        what = f"model kind {model.kind!r}" + (
            f" (task {model.task!r})" if hasattr(model, "task") else ""
        )
        if tokens_of is not None and data.source not in _TOKEN_SOURCES:
            report.add(
                ("data", "source"),
                f"{what} needs token data ({', '.join(_TOKEN_SOURCES)}), got {data.source!r}.",
            )
        if tokens_of is None and data.source not in _IMAGE_SOURCES:
            report.add(
                ("data", "source"),
                f"{what} needs labelled images ({', '.join(_IMAGE_SOURCES)}), got {data.source!r}.",
            )
        if tokens_of is not None and data.source == "stdlib_bytes" and tokens_of[0] < 256:
            gpt = isinstance(model, GPTModel)
            report.add(
                ("model", "vocab_size") if gpt else ("model", "kwargs"),
                ("" if gpt else "vocab_size ")
                + f"{tokens_of[0]} is too small for byte-level data (256 byte values); use 256.",
            )
    if data is None or plan is None or sizes is None:
        return
    factors = [(f"{a}={sizes[a]}", sizes[a]) for a in plan.data_axes if a in sizes]
    if plan.pp is not None:
        factors.append((f"microbatches={plan.pp.microbatches}", plan.pp.microbatches))
    if plan.dp is not None and plan.dp.accumulate_steps > 1:
        factors.append((f"accumulate_steps={plan.dp.accumulate_steps}", plan.dp.accumulate_steps))
    total = math.prod(n for _, n in factors)
    if total > 1 and data.batch_size % total:
        text = " × ".join(t for t, _ in factors) + (f" = {total}" if len(factors) > 1 else "")
        report.add(
            ("data", "batch_size"),
            f"{data.batch_size} does not divide over {text}; use a multiple of "
            f"{total}, e.g. {max(total, data.batch_size // total * total)}.",
        )
    if isinstance(model, GPTModel) and plan.pp is not None:
        chunks = plan.pp.stages * plan.pp.virtual_stages
        if model.n_layers % chunks:
            report.add(
                ("model", "n_layers"),
                f"{model.n_layers} layers do not split into stages × virtual_stages = "
                f"{plan.pp.stages} × {plan.pp.virtual_stages} = {chunks} equal chunks; use a "
                f"multiple of {chunks}.",
            )


def directory_problem(path: str) -> str | None:
    """Why ``path`` cannot be (or become) a writable directory, or ``None`` if it can.

    Looks without creating anything: ``path`` itself must be a directory if it exists, and the
    nearest existing ancestor must be a directory this process may write into.
    """
    target = pathlib.Path(path).expanduser()
    if target.exists() and not target.is_dir():
        return (
            f"{str(target)!r} is an existing file, not a directory; choose another path or "
            "move the file away."
        )
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return (
            f"cannot create {str(target)!r}: {str(existing)!r} is a file, not a directory; "
            "choose another path."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "write into" if existing == target else f"create {str(target)!r} in"
        return (
            f"cannot {what} {str(existing)!r}: permission denied; choose a directory you can "
            "write to (or fix its permissions)."
        )
    return None


def _path_problems(report: _Report, sections: Any) -> None:
    run, checkpoint, data = (sections.get(k) for k in ("run", "checkpoint", "data"))
    dirs: list[tuple[Path, str]] = []
    if run is not None:
        dirs.append((("run", "dir"), run.dir))
    if checkpoint is not None and checkpoint.enabled and checkpoint.dir:
        dirs.append((("checkpoint", "dir"), checkpoint.dir))
    if data is not None and data.cache_dir and data.source == "stdlib_bytes":
        dirs.append((("data", "cache_dir"), data.cache_dir))
    for where, path in dirs:
        problem = directory_problem(path)
        if problem is not None:
            report.add(where, problem)
    if data is not None and data.source == "mnist_idx" and data.path:
        from titanax.cli._data import mnist_problem

        problem = mnist_problem(data.path)
        if problem is not None:
            report.add(("data", "path"), problem)


def static_problems(
    sections: Mapping[str, Any],
    locations: Locations,
    *,
    mode: Mode,
    command: Mode | None,
    num_devices: int | None,
    devices_from: str = "",
) -> list[Problem]:
    """Every problem found across sections without JAX.

    Args:
      sections: the converted sections (absent ones were not valid and are skipped).
      locations: where each config path came from.
      mode: the mode in effect (command, ``run.mode`` or inferred).
      command: the mode of ``titanax run <mode>``, if any.
      num_devices: the device count the mesh must fill, if known.
      devices_from: how that count was chosen, for messages (``"run.cpu_devices: 8"``).

    Returns:
      The problems, in config order.
    """
    report = _Report(locations)
    _mode_problems(report, mode, command, sections)
    mesh, plan = sections.get("mesh"), sections.get("plan")
    sizes = _mesh_problems(report, mesh, num_devices, devices_from) if mesh is not None else None
    if sizes is None and mesh is not None and len(mesh.shape) == len(mesh.axes):
        # the mesh does not fit the devices (reported above): the sizes it fixes still hold
        sizes = {a: s for a, s in zip(mesh.axes, mesh.shape, strict=True) if s != -1}
    if plan is not None:
        _plan_mesh_problems(report, plan, mesh, sizes)
    _data_problems(report, sections, sizes)
    _path_problems(report, sections)
    return report.problems
