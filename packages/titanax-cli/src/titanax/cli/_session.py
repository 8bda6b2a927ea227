"""One command's view of a config: devices chosen, everything built, every problem collected.

:func:`prepare` is shared by ``run``, ``describe`` and ``validate``: it reads the config, fixes
the device count (before JAX starts), and builds the mesh, plan, model, optimizer and precision,
collecting the problems of every stage — schema, cross-section, mesh, plan against the
parameter and batch shapes, optimizer — into one :class:`~titanax.cli.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from titanax.cli._config import Config, Mode
from titanax.cli._devices import configure_devices
from titanax.cli._errors import CLIError, ConfigError
from titanax.cli._load import LoadedConfig, read_config, sort_problems
from titanax.cli._validate import infer_mode, static_problems

__all__ = ["Session", "prepare"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Session:
    """A validated config with its Titanax objects.

    Attributes:
      config: the resolved config.
      loaded: the config as read (source file, locations).
      mode: ``"dp"``, ``"tp"`` or ``"pp"``.
      mesh_spec: the declared mesh (``titanax.mesh.MeshSpec``).
      mesh: the built ``jax.sharding.Mesh``.
      plan: the ``titanax.sharding.Plan``.
      model: the ``ModelRecipe``.
      optimizer: the optax transformation.
      schedule: its learning-rate schedule (``None`` for a constant rate).
      precision: the ``titanax.exec.Precision``.
      devices: a description of the devices (``"8 cpu devices (--cpu-devices 8)"``).
    """

    config: Config
    loaded: LoadedConfig
    mode: Mode
    mesh_spec: Any
    mesh: Any
    plan: Any
    model: Any
    optimizer: Any
    schedule: Callable[[Any], Any] | None
    precision: Any
    devices: str


def _cpu_devices(
    option: int | None, loaded: LoadedConfig, *, launched: bool
) -> tuple[int | None, str]:
    """Simulated CPU devices per process: ``--cpu-devices``, else ``titanax launch``'s count,
    else ``run.cpu_devices``; ``(None, "")`` for the devices JAX finds."""
    if option is not None:
        return (None, "") if option == 0 else (option, f"--cpu-devices {option}")
    env = os.environ.get("JAX_NUM_CPU_DEVICES", "")
    if launched and env.isdigit() and int(env) > 0:
        return int(env), f"{env} per process from titanax launch"
    run = loaded.sections.get("run")
    if run is not None and run.cpu_devices is not None:
        return run.cpu_devices, f"run.cpu_devices: {run.cpu_devices}"
    raw = loaded.tree.get("run")  # the run section has problems: use a valid count anyway
    count = raw.get("cpu_devices") if isinstance(raw, dict) else None
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        return count, f"run.cpu_devices: {count}"
    return None, ""


def prepare(
    path: str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    command: Mode | None = None,
    cpu_devices: int | None = None,
) -> Session:
    """Reads, checks and builds a config for a command.

    Args:
      path: the YAML config.
      overrides: ``--set key.path=value`` strings.
      command: the mode of ``titanax run <mode>`` (``None`` for describe/validate: ``run.mode``
        or the mode the plan implies).
      cpu_devices: ``--cpu-devices``: simulate this many CPU devices per process (``0``: use
        the devices JAX finds even if the config asks for simulated ones; ``None``: as
        ``titanax launch`` or the config says).

    Returns:
      The :class:`Session`.

    When the ``TITANAX_*`` variables of a multi-process launch are set (``titanax launch``,
    see ``titanax.mesh.ENV_VARS``), the process joins the run with
    ``titanax.mesh.initialize_distributed()`` before anything touches the devices.

    Raises:
      ConfigError: every problem found, each with its location.
      CLIError: the devices cannot be set up.
      DistributedError: joining the multi-process run failed.
    """
    loaded = read_config(path, overrides)
    from titanax.mesh import ENV_VARS, initialize_distributed

    launched = bool(os.environ.get(ENV_VARS["coordinator_address"]))
    count, chosen_by = _cpu_devices(cpu_devices, loaded, launched=launched)
    configure_devices(count)
    import jax

    if launched:  # one process of a multi-process run (titanax launch sets TITANAX_*)
        initialize_distributed()

    run = loaded.sections.get("run")
    if run is not None and run.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(run.compilation_cache))

    devices = jax.devices()
    local = jax.local_device_count()
    if count is not None and local != count:
        raise CLIError(
            f"asked for {count} simulated CPU devices ({chosen_by}) but JAX has {local} "
            f"{devices[0].platform} device(s); run `titanax` in a fresh process."
        )
    devices_text = (
        f"{len(devices)} {devices[0].platform} device(s)"
        + (f" ({chosen_by})" if chosen_by else " (all JAX found)")
        + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else "")
    )
    sections = loaded.sections
    plan_config = sections.get("plan")
    mode: Mode = (
        command
        or (run.mode if run is not None and run.mode else None)
        or (infer_mode(plan_config) if plan_config is not None else "tp")
    )
    static = static_problems(
        sections,
        loaded.locations,
        mode=mode,
        command=command,
        num_devices=len(devices),
        devices_from=devices_text,
    )
    problems = [*loaded.problems, *static]
    built = _build_all(loaded, mode, problems, static)
    if problems:
        raise ConfigError(sort_problems(problems))
    if loaded.config is None or built is None:  # unreachable: no problems means all was built
        raise CLIError(f"could not build {loaded.source}; run titanax validate on it.")
    return Session(config=loaded.config, loaded=loaded, mode=mode, devices=devices_text, **built)


def _section(problem: Any) -> str:
    return str(re.split(r"[.\[]", problem.path)[0])


def _check_optimizer_kwargs(loaded: LoadedConfig, report: Any) -> None:
    """Checks the optimizer's name and the optax kwargs of an optimizer section that did not
    convert because of its own value checks (learning_rate vs schedule, clip_grad_norm), so that
    all its problems are reported at once; only the name/kwargs/schedule problems are added."""
    from titanax.cli import _build
    from titanax.cli._convert import convert_section

    raw = loaded.tree.get("optimizer")
    if not isinstance(raw, dict):
        return
    trimmed = {k: v for k, v in raw.items() if k not in ("learning_rate", "clip_grad_norm")}
    if isinstance(trimmed.get("kwargs"), dict):
        trimmed["kwargs"] = {k: v for k, v in trimmed["kwargs"].items() if k != "learning_rate"}
    section = convert_section("optimizer", trimmed, loaded.locations)
    if section is None:
        return
    _build.build_optimizer(section, report)


def _build_all(
    loaded: LoadedConfig, mode: Mode, problems: list[Any], static: Sequence[Any]
) -> dict[str, Any] | None:
    """Builds the Titanax objects of every section that converted; appends their problems.

    A section whose only schema problems are unknown keys converted (without them) and is built
    too; a section with a problem across sections (``static``) is not built again, since its
    build would report the same cause twice. The plan is checked against the parameter and
    batch shapes whenever the mesh, plan and model sections have no problem of their own.
    """
    import jax

    from titanax.cli import _build
    from titanax.exec import ExecError
    from titanax.mesh import MeshError
    from titanax.models import ModelError
    from titanax.sharding import ShardingError

    report = _build.Problems(loaded.locations)
    config = loaded.config
    # Sections with a cross-section problem are not built again (one message per cause).
    reported = {_section(p) for p in static}
    sections = {k: v for k, v in loaded.sections.items() if k not in reported}
    out: dict[str, Any] = {}
    if "mesh" in sections:
        try:
            spec = _build.build_mesh(sections["mesh"])
            out["mesh_spec"], out["mesh"] = spec, spec.build()
        except MeshError as err:
            report.add(("mesh",), str(err))
    if "plan" in sections:
        try:
            out["plan"] = _build.build_plan(sections["plan"], mode=mode)
        except ShardingError as err:
            report.add_lines(("plan",), err)
    if "model" in sections and "data" in sections:
        base_dir = pathlib.Path(loaded.source).expanduser().resolve().parent
        try:
            out["model"] = _build.build_model(
                sections["model"], sections["data"], mode=mode, base_dir=base_dir
            )
        except ModelError as err:
            report.add(("model",), str(err))
        except ConfigError as err:  # a flax_nnx module that cannot be loaded or built
            for problem in err.problems:
                report.add(tuple(problem.path.split(".")), problem.message)
    if "optimizer" in sections:
        out["optimizer"], out["schedule"] = _build.build_optimizer(sections["optimizer"], report)
    elif "optimizer" not in reported:
        _check_optimizer_kwargs(loaded, report)
    if "precision" in sections and config is not None:
        try:
            out["precision"] = _build.build_precision(config)
        except ExecError as err:
            report.add(("precision",), str(err))
    troubled = {_section(p) for p in [*problems, *report.items]}
    if not troubled & {"mesh", "plan", "model"} and {"mesh", "plan", "model"} <= set(out):
        # with a data problem (e.g. data.batch_size, reported already) only the parameters
        batch = None if "data" in troubled else out["model"].batch
        try:
            shapes = jax.eval_shape(out["model"].init, jax.random.key(0))
            out["plan"].validate(out["mesh"], params=shapes, batch=batch)
        except ShardingError as err:
            report.add_lines(("plan",), err)
        except ModelError as err:
            report.add(("model",), str(err))
    problems.extend(report.items)
    needed = {"mesh_spec", "mesh", "plan", "model", "optimizer", "schedule", "precision"}
    if problems or not needed <= set(out) or out["optimizer"] is None:
        return None
    return out
