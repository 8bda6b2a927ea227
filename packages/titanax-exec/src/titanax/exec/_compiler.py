"""Compiling a step for a mesh and plan: one SPMD executable per input signature.

The executable is built ahead of time (``jax.jit(...).lower(...).compile()``) with the state's
shardings pinned identical in and out, the batch over the data axes and the state donated. It is
cached by the signature of its inputs (tree structure, shapes, dtypes, shardings and static
arguments); a second signature for the same step is a *recompile*, reported with its reason
(and refused in strict mode).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from titanax.exec._errors import ExecError, RecompileError
from titanax.exec._hlo import CompileReport
from titanax.exec._state import StepContext, TrainState, constrain_to
from titanax.exec._step import StepFunction

__all__ = ["CompiledStep", "Signature", "signature_of"]

logger = logging.getLogger("titanax.exec")

Signature = tuple[Any, ...]


def signature_of(tree: Any) -> Signature:
    """(treedef, ((shape, dtype, sharding), ...)) of a pytree of arrays or ShapeDtypeStructs."""
    leaves, treedef = jax.tree.flatten(tree)
    return (
        treedef,
        tuple(
            (tuple(x.shape), str(x.dtype), getattr(x, "sharding", None), _weak(x)) for x in leaves
        ),
    )


def _weak(x: Any) -> bool:
    aval = getattr(x, "aval", None)
    return bool(getattr(aval, "weak_type", getattr(x, "weak_type", False)))


def _diff(old: Signature, new: Signature, what: str, tree: Any) -> list[str]:
    if old[0] != new[0]:
        return [f"{what}: tree structure changed ({old[0]} -> {new[0]})"]
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    reasons = []
    for path, a, b in zip(paths, old[1], new[1], strict=True):
        for label, x, y in zip(("shape", "dtype", "sharding", "weak type"), a, b, strict=True):
            if x != y:
                reasons.append(f"{what}{path}: {label} {x} -> {y}")
    return reasons


@dataclasses.dataclass
class _Entry:
    executable: Any
    report: CompileReport | None
    compile_seconds: float


class CompiledStep:
    """The executables of one step function on one Engine, keyed by input signature.

    Args:
      step: the step.
      mesh: the mesh.
      state_shardings: ``NamedSharding`` tree of the state (pinned in and out).
      batch_shardings_fn: ``batch -> NamedSharding`` tree (the plan's batch layout).
      context: the step's static context (view, data axes, accumulation, remat, layouts).
      compute_param_shardings: for the global view with FSDP, the layout the step sees its
        params in (FSDP axes gathered); ``None`` otherwise.
      strict: raise :class:`RecompileError` instead of logging a recompile.
      on_compile: called with ``(seconds, reasons)`` after every compile.
    """

    def __init__(
        self,
        step: StepFunction,
        *,
        mesh: jax.sharding.Mesh,
        state_shardings: Any,
        batch_shardings_fn: Callable[[Any], Any],
        context: StepContext,
        compute_param_shardings: Any | None,
        strict: bool,
        on_compile: Callable[[float, list[str]], None] | None = None,
    ) -> None:
        self.step = step
        self.mesh = mesh
        self.state_shardings = state_shardings
        self.batch_shardings_fn = batch_shardings_fn
        self.context = context
        self.compute_param_shardings = compute_param_shardings
        self.strict = strict
        self.on_compile = on_compile
        self._entries: dict[Signature, _Entry] = {}
        self._last: tuple[Signature, Signature, Any] | None = None
        self.compiles = 0

    # -- tracing --------------------------------------------------------------------------------

    def _traced(self, static: Mapping[str, Any], batch_shardings: Any) -> Callable[..., Any]:
        step, context = self.step, self.context
        per_device = step.view == "per_device"
        compute = self.compute_param_shardings

        def body(state: TrainState, batch: Any) -> Any:
            if not isinstance(state, TrainState):
                raise ExecError(f"step {step.name!r}: first argument must be a TrainState.")
            inner = state.replace(context=context)
            if not per_device:
                batch = constrain_to(batch, batch_shardings)
                if compute is not None:
                    inner = inner.replace(params=constrain_to(inner.params, compute))
            out = step.fn(inner, batch, **static)
            if step.kind == "eval":
                return inner.precision.cast_to_output(_check_metrics(step, out))
            if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], TrainState)):
                raise ExecError(
                    f"step {step.name!r} must return (state, metrics) with a TrainState first; "
                    f"got {type(out).__name__}. Use step_fn(kind='eval') for steps that do not "
                    "update the state."
                )
            new_state, metrics = out
            new_state = new_state.replace(context=state.context)
            return new_state, inner.precision.cast_to_output(_check_metrics(step, metrics))

        if not per_device:
            return body
        state_specs = jax.tree.map(lambda s: s.spec, self.state_shardings)
        batch_specs = jax.tree.map(lambda s: s.spec, batch_shardings)
        out_specs = P() if step.kind == "eval" else (state_specs, P())
        return jax.shard_map(
            body,
            mesh=self.mesh,
            in_specs=(state_specs, batch_specs),
            out_specs=out_specs,
            check_vma=False,
        )

    def _compile(self, state: Any, batch: Any, static: Mapping[str, Any]) -> _Entry:
        batch_shardings = self.batch_shardings_fn(batch)
        replicated = NamedSharding(self.mesh, P())
        out_shardings: Any = (
            replicated if self.step.kind == "eval" else (self.state_shardings, replicated)
        )
        jitted = jax.jit(
            self._traced(static, batch_shardings),
            in_shardings=(self.state_shardings, batch_shardings),
            out_shardings=out_shardings,
            donate_argnums=(0,) if self.step.donate else (),
        )
        start = time.perf_counter()
        compiled = jitted.lower(state, batch).compile()
        seconds = time.perf_counter() - start
        return _Entry(executable=compiled, report=None, compile_seconds=seconds)

    # -- public ---------------------------------------------------------------------------------

    def report(self, state: Any, batch: Any, **static: Any) -> CompileReport:
        """Compiles (or reuses) for these inputs — arrays or ShapeDtypeStructs — and reads the
        executable's memory, FLOPs and collectives."""
        entry = self._entry(state, batch, static)
        if entry.report is None:
            entry.report = CompileReport.from_compiled(
                entry.executable, self.mesh, compile_seconds=entry.compile_seconds
            )
        return entry.report

    def lower(self, state: Any, batch: Any, **static: Any) -> Any:
        """The ``jax.stages.Lowered`` program for these inputs (not compiled)."""
        batch_shardings = self.batch_shardings_fn(batch)
        replicated = NamedSharding(self.mesh, P())
        out_shardings: Any = (
            replicated if self.step.kind == "eval" else (self.state_shardings, replicated)
        )
        return jax.jit(
            self._traced(static, batch_shardings),
            in_shardings=(self.state_shardings, batch_shardings),
            out_shardings=out_shardings,
            donate_argnums=(0,) if self.step.donate else (),
        ).lower(state, batch)

    def _entry(self, state: Any, batch: Any, static: Mapping[str, Any]) -> _Entry:
        unknown = sorted(set(static) - set(self.step.static_argnames))
        if unknown:
            raise ExecError(
                f"step {self.step.name!r}: keyword arguments {unknown} are not declared in "
                f"step_fn(static_argnames=...) (declared: {list(self.step.static_argnames)})."
            )
        key = (signature_of(state), signature_of(batch), tuple(sorted(static.items())))
        entry = self._entries.get(key)
        if entry is not None:
            return entry
        reasons: list[str] = []
        if self._last is not None:
            old_state, old_batch, old_static = self._last
            reasons = _diff(old_state, key[0], "state", state) + _diff(
                old_batch, key[1], "batch", batch
            )
            if old_static != key[2]:
                reasons.append(f"static arguments {dict(old_static)} -> {dict(key[2])}")
            message = (
                f"step {self.step.name!r} is compiled again (compile #{self.compiles + 1}): "
                + ("; ".join(reasons) or "new input signature")
            )
            if self.strict:
                raise RecompileError(
                    message + ". Keep batch shapes, dtypes and shardings fixed (pad the last "
                    "batch or drop it), or create the Engine with strict=False."
                )
            logger.warning(message)
        entry = self._compile(state, batch, static)
        self.compiles += 1
        self._entries[key] = entry
        self._last = key
        if self.on_compile is not None:
            self.on_compile(entry.compile_seconds, reasons)
        return entry

    def __call__(self, state: Any, batch: Any, **static: Any) -> Any:
        return self._entry(state, batch, static).executable(state, batch)


def _check_metrics(step: StepFunction, metrics: Any) -> Any:
    if not isinstance(metrics, Mapping):
        raise ExecError(
            f"step {step.name!r}: metrics must be a dict of scalars, got {type(metrics).__name__}."
        )
    for name, value in metrics.items():
        if not hasattr(value, "dtype") and not isinstance(value, int | float):
            raise ExecError(
                f"step {step.name!r}: metric {name!r} is {type(value).__name__} {value!r}; "
                "metrics must be numeric scalars."
            )
        if not isinstance(name, str) or jax.numpy.ndim(value) != 0:
            raise ExecError(
                f"step {step.name!r}: metric {name!r} has shape {jax.numpy.shape(value)}; "
                "metrics must be scalars (reduce them in the step)."
            )
    return dict(metrics)
