"""The ``titanax`` command (Typer): run, describe, validate, verify, ckpt inspect, plot, schedule,
launch.

Nothing heavy is imported at module level: JAX must not start before ``--cpu-devices`` (or
``run.cpu_devices``) has been applied, and ``titanax --help`` should answer at once. Errors reach
the user as one clear message and exit code 1 (configuration problems: one line each, with file
and line); ``--debug`` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any, NoReturn, TypeVar

import typer

__all__ = ["app", "main"]

_DEBUG = {"on": os.environ.get("TITANAX_DEBUG", "") not in ("", "0")}

app = typer.Typer(
    name="titanax",
    help="Titanax: explicit-parallelism training for JAX, from YAML configs.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
ckpt_app = typer.Typer(help="Checkpoint tools.", no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(ckpt_app, name="ckpt")


class RunMode(enum.StrEnum):
    """The training recipes of ``titanax run``."""

    dp = "dp"
    tp = "tp"
    pp = "pp"


class ScheduleKind(enum.StrEnum):
    """Pipeline schedules."""

    gpipe = "gpipe"
    one_f_one_b = "1f1b"
    interleaved = "interleaved"


ConfigOption = Annotated[
    str,
    typer.Option("--config", "-c", help="YAML config file.", show_default=False),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a config value: [bold]--set optimizer.learning_rate=3e-4[/bold] "
        "(value read as YAML; repeatable; type-checked).",
        show_default=False,
    ),
]
DevicesOption = Annotated[
    int | None,
    typer.Option(
        "--cpu-devices",
        help="Simulate N CPU devices (overrides run.cpu_devices; 0 = the devices JAX finds).",
        show_default=False,
    ),
]
ModeOption = Annotated[
    RunMode | None,
    typer.Option("--mode", help="Recipe to check against (default: run.mode, or the plan's)."),
]

F = TypeVar("F", bound=Callable[..., Any])

_FLAG = ""  # the metavar of on/off flags: Typer's help would otherwise show them as <bool>


def _console(*, stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _fail(err: BaseException) -> NoReturn:
    """Prints ``err`` as a user-facing message (or its traceback with --debug) and exits."""
    console = _console(stderr=True)
    if _DEBUG["on"]:
        console.print_exception(show_locals=False)
    if isinstance(err, KeyboardInterrupt):
        from titanax.exec import TrainingInterrupted

        if isinstance(err, TrainingInterrupted):  # Engine.fit stopped cleanly between steps
            head = f"[bold red]stopped[/bold red] by {err.signal_name} at step {err.step}: "
            directory = getattr(err, "checkpoint_directory", "")  # set by `titanax run`
            if directory is None:
                console.print(
                    head + "no checkpoint saved (checkpoint.enabled is false); a re-run starts "
                    "from step 0"
                )
            else:
                from rich.markup import escape

                where = f" in {escape(directory)}" if directory else ""
                console.print(head + f"checkpoint saved{where}; run the same command to resume")
        else:  # a Ctrl-C outside the training loop's clean stop: nothing was saved now
            console.print(
                "[bold red]interrupted[/bold red] without saving; a re-run of the same command "
                "resumes from the newest complete checkpoint (if any)"
            )
        raise typer.Exit(130)
    from titanax.cli._errors import ConfigError
    from titanax.mesh import TitanaxError

    if isinstance(err, ConfigError):
        count = len(err.problems)
        console.print(
            f"[bold red]error:[/bold red] the config has {count} problem{'s' * (count != 1)}:"
        )
        for problem in err.problems:
            console.print(f"  {problem.line()}", markup=False)
    else:  # a Titanax error says what to fix; anything else is unexpected (a bug, or the system)
        kind = "" if isinstance(err, TitanaxError) else "unexpected "
        console.print(f"[bold red]error:[/bold red] {kind}", end="")
        console.print(f"{type(err).__name__}: {err}", markup=False)
    if not _DEBUG["on"]:
        console.print("(run with --debug for the traceback)", style="dim")
    raise typer.Exit(1)


def _handled(fn: F) -> F:
    """Turns exceptions of a command into one message and exit code 1 (see :func:`_fail`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (Exception, KeyboardInterrupt) as err:
            _fail(err)

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        from titanax.cli._version import __version__

        typer.echo(f"titanax-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show the full traceback of an error instead of its one-line message "
            "(also accepted after the command, or with TITANAX_DEBUG=1).",
            metavar=_FLAG,
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Show the version and exit.",
            metavar=_FLAG,
        ),
    ] = False,
) -> None:
    """Titanax: train JAX models with explicit data, FSDP, tensor and pipeline parallelism."""
    if debug:
        _DEBUG["on"] = True


@app.command()
@_handled
def run(
    mode: Annotated[RunMode, typer.Argument(help="dp, tp or pp.", show_default=False)],
    config: ConfigOption,
    set_: SetOption = None,
    cpu_devices: DevicesOption = None,
) -> None:
    """Train from a YAML config; running the same command again resumes from the newest checkpoint.

    [bold]dp[/bold]: data parallel in the per-device view with an explicit gradient pmean.
    [bold]tp[/bold]: global view over data / fsdp / tensor axes (Megatron rules for the GPT).
    [bold]pp[/bold]: the GPT's blocks split into pipeline stages (GPipe, 1F1B, interleaved).
    """
    from titanax.cli._session import prepare
    from titanax.cli._train import train

    session = prepare(config, overrides=set_ or (), command=mode.value, cpu_devices=cpu_devices)
    train(session, _console())


@app.command()
@_handled
def describe(
    config: ConfigOption,
    set_: SetOption = None,
    cpu_devices: DevicesOption = None,
    mode: ModeOption = None,
) -> None:
    """Show the mesh, every parameter's layout, and a dry run's memory and communication."""
    from titanax.cli._describe import describe as describe_session
    from titanax.cli._session import prepare

    session = prepare(
        config,
        overrides=set_ or (),
        command=mode.value if mode else None,
        cpu_devices=cpu_devices,
    )
    describe_session(session, _console())


@app.command()
@_handled
def validate(
    config: ConfigOption,
    set_: SetOption = None,
    cpu_devices: DevicesOption = None,
    mode: ModeOption = None,
) -> None:
    """Check a config: every schema, mesh, plan and optimizer problem at once (exit code 1)."""
    from titanax.cli._session import prepare

    session = prepare(
        config,
        overrides=set_ or (),
        command=mode.value if mode else None,
        cpu_devices=cpu_devices,
    )
    sizes = " × ".join(f"{a}={s}" for a, s in session.mesh.shape.items())
    _console().print(
        f"[bold green]ok[/bold green] {config}: mode {session.mode}, mesh {sizes} on "
        f"{session.devices}; {session.model.summary.removeprefix('model: ')}"
    )


@app.command()
@_handled
def verify(
    config: ConfigOption,
    steps: Annotated[int, typer.Option("--steps", "-k", help="Training steps to compare.")] = 3,
    set_: SetOption = None,
    cpu_devices: DevicesOption = None,
    mode: ModeOption = None,
    shrink: Annotated[
        bool,
        typer.Option(
            "--shrink/--no-shrink",
            help="Shrink the model (divisibility kept) and use synthetic data; "
            "--no-shrink keeps the config's sizes and data.",
            metavar=_FLAG,
        ),
    ] = True,
) -> None:
    """Check a layout's numerics: K steps under the plan vs. one device (exit code 1 on FAIL).

    The config's model runs at a tiny size from the same initial parameters and batches under
    the config's mesh and plan and on one device (for [bold]pp[/bold]: the unpipelined model);
    prints the per-step loss difference and each parameter group's relative gradient
    difference, PASS/FAIL against the compute dtype's tolerance.
    """
    from titanax.cli._verify import verify as verify_config

    report = verify_config(
        config,
        _console(),
        overrides=set_ or (),
        steps=steps,
        command=mode.value if mode else None,
        cpu_devices=cpu_devices,
        shrink=shrink,
    )
    if not report.passed:
        raise typer.Exit(1)


@ckpt_app.command("inspect")
@_handled
def ckpt_inspect(
    path: Annotated[str, typer.Argument(help="A checkpoint directory, a step, or a run dir.")],
    step: Annotated[int | None, typer.Option(help="Step to describe (default: latest).")] = None,
    show_config: Annotated[
        bool,
        typer.Option("--show-config", help="Print the config saved with the step.", metavar=_FLAG),
    ] = False,
) -> None:
    """List a checkpoint's steps and arrays (shapes, dtypes, saved shardings) from metadata."""
    import pathlib

    import yaml

    from titanax.cli._errors import CLIError
    from titanax.io import CheckpointError, inspect_checkpoint

    root = pathlib.Path(path)
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    try:
        info = inspect_checkpoint(root, step=step)
    except CheckpointError:
        if step is None or not root.is_dir():
            raise
        # "not complete" is right for an entry of that step (temporary or unmarked), but a
        # step with no directory at all is simply absent
        if any(entry.name.split(".", 1)[0] == str(step) for entry in root.iterdir()):
            raise
        steps = list(inspect_checkpoint(root).steps)
        raise CLIError(
            f"titanax ckpt inspect {path}: there is no step {step} in {root}; complete steps: "
            f"{steps}. Pass one of them to --step (or leave --step off for the latest)."
        ) from None
    console = _console()
    console.print(info.describe(), end="", markup=False)
    meta = info.metadata
    mesh = meta.get("mesh") or {}
    console.print(
        f"step {info.step}: data position {meta.get('data_position')}, mesh "
        f"{dict(zip(mesh.get('axes', []), mesh.get('shape', []), strict=False))}, plan "
        f"{str(meta.get('plan_fingerprint', ''))[:12]}, saved {_utc(meta.get('wall_time'))}",
        markup=False,
    )
    if show_config and isinstance(meta.get("config"), dict):
        console.print(yaml.safe_dump(meta["config"], sort_keys=False), markup=False)


def _utc(seconds: Any) -> str:
    """A Unix time as ISO-8601 UTC (``2026-11-30T11:25:35Z``), or ``"at an unknown time"``."""
    import datetime

    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "at an unknown time"
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _png(out: str, option: str) -> str:
    """``out`` if it names a PNG file; raises :class:`CLIError` otherwise."""
    import pathlib

    from titanax.cli._errors import CLIError

    suffix = pathlib.Path(out).suffix
    if suffix.lower() != ".png":
        stem = pathlib.Path(out).with_suffix("").name if suffix else pathlib.Path(out).name
        raise CLIError(
            f"{option} {out}: this command writes PNG images only (got "
            + (f"suffix {suffix!r}" if suffix else "no suffix")
            + f"); name a .png file, e.g. {option} {stem}.png."
        )
    return out


@app.command()
@_handled
def plot(
    run_dir: Annotated[str, typer.Argument(help="A run directory (or one metrics file).")],
    out: Annotated[
        str | None, typer.Option(help="PNG to write (default RUN_DIR/loss.png).")
    ] = None,
    keys: Annotated[
        str, typer.Option(help="Comma-separated metric names to draw.")
    ] = "loss,eval_loss",
) -> None:
    """Draw loss curves (training and validation) from a run's metric files into a PNG."""
    import pathlib

    from titanax.cli._errors import CLIError
    from titanax.io import plot_metrics, read_metrics

    root = pathlib.Path(run_dir)
    target = (
        pathlib.Path(_png(out, "--out"))
        if out
        else (root if root.is_dir() else root.parent) / "loss.png"
    )
    names = [k.strip() for k in keys.split(",") if k.strip()]
    series = read_metrics(root)  # SinkError when run_dir does not exist
    logged = sorted(k for k, v in series.items() if v)
    if not logged:
        raise CLIError(
            f"titanax plot {run_dir}: no metric rows found there (no .csv or .jsonl files with "
            "steps); pass the run directory that `titanax run` wrote (run.dir), or one metrics "
            "file."
        )
    if not any(k in logged for k in names):
        example = next((k for k in ("loss", "eval_loss") if k in logged), logged[0])
        raise CLIError(
            f"titanax plot {run_dir}: none of --keys {','.join(names)} was logged there (logged: "
            f"{', '.join(logged)}); pass --keys with some of those, e.g. --keys {example}."
        )
    written = plot_metrics(root, target, keys=names)
    _console().print(f"wrote {written}")


@app.command()
@_handled
def schedule(
    kind: Annotated[ScheduleKind, typer.Argument(help="gpipe, 1f1b or interleaved.")],
    stages: Annotated[int, typer.Option("--stages", "-p", help="Pipeline stages P.")],
    microbatches: Annotated[int, typer.Option("--microbatches", "-m", help="Microbatches M.")],
    virtual: Annotated[
        int, typer.Option("--virtual", "-v", help="Virtual stages V (interleaved).")
    ] = 1,
    out: Annotated[str | None, typer.Option(help="PNG to write (default <kind>.png).")] = None,
) -> None:
    """Draw a pipeline schedule's timeline (PNG) and print its bubble fraction."""
    from titanax.pipeline import build_schedule, plot_schedule

    if out is not None:
        _png(out, "--out")
    table = build_schedule(
        kind.value,
        stages=stages,
        microbatches=microbatches,
        virtual_stages=virtual,
    )
    target = out or f"{kind.value}_p{stages}_m{microbatches}" + (
        f"_v{virtual}.png" if virtual > 1 else ".png"
    )
    written = plot_schedule(table, target)
    console = _console()
    console.print(table.describe(), markup=False)
    console.print(
        f"bubble {table.bubble_fraction:.1%} of {table.num_ticks} ticks × {stages} stages "
        f"(GPipe/1F1B ideal (P-1)/(M+P-1) = {(stages - 1) / (microbatches + stages - 1):.1%}); "
        f"wrote {written}"
    )


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_handled
def launch(
    ctx: typer.Context,
    nproc: Annotated[int, typer.Option("--nproc", "-n", help="Processes to start.")],
    cpu_devices_per_proc: Annotated[
        int | None,
        typer.Option(help="Simulated CPU devices per process (default: the devices JAX finds)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Coordinator port on 127.0.0.1 (default: a free one).")
    ] = None,
) -> None:
    """Run a command as N processes of one JAX run on this machine (after [bold]--[/bold]).

    [bold]titanax launch --nproc 2 --cpu-devices-per-proc 4 -- titanax run tp -c gpt.yaml[/bold]
    """
    from titanax.cli._launch import launch as launch_processes

    code = launch_processes(
        list(ctx.args), nproc=nproc, cpu_devices_per_proc=cpu_devices_per_proc, port=port
    )
    raise typer.Exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``titanax`` console script.

    ``--debug`` is accepted anywhere on the command line.

    Returns:
      The exit code (0 on success).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        _DEBUG["on"] = True
        args = [a for a in args if a != "--debug"]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=args, prog_name="titanax", standalone_mode=True)
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
