"""The training loop behind ``Engine.fit``: dispatch, log points, evaluation, checkpoints."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from titanax.exec._errors import ExecError, NonFiniteError
from titanax.exec._signals import StopRequest, TrainingInterrupted
from titanax.exec._state import TrainState
from titanax.exec._step import StepFunction
from titanax.exec._throughput import peak_flops_per_device

if TYPE_CHECKING:
    from titanax.exec._engine import Engine

__all__ = ["FitLoop"]

logger = logging.getLogger("titanax.exec")


def _jax_version() -> tuple[int, ...]:
    return tuple(int(p) for p in jax.__version__.split(".")[:2] if p.isdigit())


class FitLoop:
    """One call of ``Engine.fit`` (see its docstring for the arguments)."""

    def __init__(
        self,
        engine: Engine,
        step: StepFunction,
        data: Iterable[Any],
        *,
        steps: int,
        log_every: int,
        eval_step: StepFunction | None,
        eval_data: Callable[[], Iterable[Any]] | Iterable[Any] | None,
        eval_every: int | None,
        checkpoint_every: int | None,
        tokens_per_batch: int | None,
        flops_per_token: float | None,
        profile_steps: tuple[int, int] | None,
        profile_dir: str | None,
        progress: bool,
    ) -> None:
        for name, value in (("steps", steps), ("log_every", log_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ExecError(f"Engine.fit: {name}={value!r} must be a positive int.")
        for name, every in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
            if every is not None and (not isinstance(every, int) or every < 1):
                raise ExecError(f"Engine.fit: {name}={every!r} must be a positive int or None.")
        if (eval_every is None) != (eval_step is None) or (eval_step and eval_data is None):
            raise ExecError(
                "Engine.fit: evaluation needs eval_step, eval_data and eval_every together."
            )
        if profile_steps is not None and (
            profile_dir is None or profile_steps[0] >= profile_steps[1]
        ):
            raise ExecError(
                f"Engine.fit: profile_steps={profile_steps} needs a window (a, b) with a < b and "
                "profile_dir=."
            )
        if not isinstance(step, StepFunction):
            raise ExecError(
                f"Engine.fit: {step!r} is not a step; decorate it with @titanax.exec.step_fn."
            )
        if step.kind != "train":
            raise ExecError(f"Engine.fit: {step.name!r} is an eval step; pass a train step.")
        if not isinstance(data, Iterable):
            raise ExecError(
                f"Engine.fit: data must be an iterable of batches (a loader, a list, a "
                f"generator), got {type(data).__name__}."
            )
        self.engine = engine
        self.step = step
        self.data = data
        self.steps = steps
        self.log_every = log_every
        self.eval_step = eval_step
        self.eval_data = eval_data
        self.eval_every = eval_every
        self.checkpoint_every = checkpoint_every
        self.tokens_per_batch = tokens_per_batch
        self.flops_per_token = flops_per_token
        self.profile_steps = profile_steps
        self.profile_dir = profile_dir
        self.show_progress = progress and jax.process_index() == 0
        self.bound = self.must_bound_in_flight()

    @staticmethod
    def must_bound_in_flight() -> bool:
        """True on the CPU backend of jax < 0.12 (its collectives abort with several programs in
        flight; see ENVIRONMENT notes) — the loop then awaits each step."""
        return jax.default_backend() == "cpu" and _jax_version() < (0, 12)

    # -- helpers --------------------------------------------------------------------------------

    def _batch_sizes(self, batch: Any) -> tuple[int, int | None]:
        leaves = jax.tree.leaves(batch)
        samples = int(np.shape(leaves[0])[0]) * jax.process_count() if leaves else 0
        tokens = self.tokens_per_batch
        if tokens is None and isinstance(batch, dict) and "inputs" in batch:
            inputs = batch["inputs"]
            if np.issubdtype(
                np.asarray(inputs).dtype if not isinstance(inputs, jax.Array) else inputs.dtype,
                np.integer,
            ):
                tokens = int(np.prod(np.shape(inputs))) * jax.process_count()
        return samples, tokens

    def _eval_iterable(self) -> Iterable[Any]:
        source = self.eval_data
        return source() if callable(source) else source  # type: ignore[return-value]

    def _write(self, step: int, metrics: dict[str, float]) -> None:
        for sink in self.engine.sinks:
            sink.write(step, metrics)
        for hook in self.engine.hooks:
            if hasattr(hook, "on_log"):
                hook.on_log(step, metrics)

    @staticmethod
    def _memory() -> dict[str, float]:
        stats = getattr(jax.local_devices()[0], "memory_stats", lambda: None)()
        if not stats:
            return {}
        out = {}
        if "bytes_in_use" in stats:
            out["memory_gib"] = stats["bytes_in_use"] / 2**30
        if "peak_bytes_in_use" in stats:
            out["peak_memory_gib"] = stats["peak_bytes_in_use"] / 2**30
        return out

    # -- the loop -------------------------------------------------------------------------------

    def run(self, state: TrainState) -> TrainState:
        engine = self.engine
        start = int(jax.device_get(state.step))
        if start >= self.steps:
            logger.info("state is at step %d >= steps=%d: nothing to train", start, self.steps)
            return state
        for hook in engine.hooks:
            if hasattr(hook, "on_train_start"):
                hook.on_train_start(engine, state)
        progress = None
        if self.show_progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                transient=False,
            )
        iterator: Iterator[Any] = iter(self.data)
        buffer: list[Any] = []
        last_time = time.perf_counter()
        last_step = start
        compiles_seen = len(engine.compile_seconds)
        peak = peak_flops_per_device()
        step_number = start
        profiling = False
        stop = StopRequest()
        try:
            with stop, progress if progress is not None else contextlib.nullcontext():
                task = (
                    progress.add_task("train", total=self.steps, completed=start, status="")
                    if progress is not None
                    else None
                )
                while step_number < self.steps:
                    if self.profile_steps and step_number == self.profile_steps[0]:
                        jax.profiler.start_trace(str(self.profile_dir))
                        profiling = True
                    try:
                        host_batch = next(iterator)
                    except StopIteration:
                        logger.warning(
                            "data ran out at step %d before steps=%d", step_number, self.steps
                        )
                        break
                    samples, tokens = self._batch_sizes(host_batch)
                    state, metrics = engine.step(self.step, state, host_batch)
                    buffer.append(metrics)
                    step_number += 1
                    if self.bound:
                        jax.block_until_ready(metrics)
                    if profiling and step_number >= self.profile_steps[1]:  # type: ignore[index]
                        jax.block_until_ready(state)
                        jax.profiler.stop_trace()
                        profiling = False
                    last = step_number == self.steps
                    log_point = step_number % self.log_every == 0 or last
                    if log_point:
                        keys = list(buffer[0])
                        window = jnp.stack(  # [metrics, steps]: one device-to-host transfer
                            [jnp.stack([m[k] for m in buffer]).astype(jnp.float32) for k in keys]
                        )
                        fetched = np.asarray(jax.device_get(window))
                        host = {k: fetched[i] for i, k in enumerate(keys)}
                        now = time.perf_counter()
                        n = step_number - last_step
                        elapsed = now - last_time
                        record = {k: float(v[-1]) for k, v in host.items()}
                        record["step_time_s"] = elapsed / n
                        record["samples_per_s"] = samples * n / elapsed
                        if tokens is not None:
                            record["tokens_per_s"] = tokens * n / elapsed
                            if self.flops_per_token is not None and peak is not None:
                                achieved = self.flops_per_token * record["tokens_per_s"]
                                record["mfu"] = achieved / (peak * jax.device_count())
                        new_compiles = engine.compile_seconds[compiles_seen:]
                        if new_compiles:
                            record["compile_time_s"] = float(sum(new_compiles))
                            compiles_seen = len(engine.compile_seconds)
                        record.update(self._memory())
                        self._check_finite(host, last_step, step_number, state)
                        self._write(step_number, record)
                        if progress is not None and task is not None:
                            progress.update(
                                task, completed=step_number, status=self._status(record)
                            )
                        buffer.clear()
                        last_time, last_step = time.perf_counter(), step_number
                        if engine.stop_reason is not None:
                            break
                    if self.eval_every and step_number % self.eval_every == 0:
                        assert self.eval_step is not None  # checked in __init__
                        scores = engine.evaluate(
                            self.eval_step,
                            self._eval_iterable(),
                            state=state,
                        )
                        self._write(step_number, {f"eval_{k}": v for k, v in scores.items()})
                        last_time = time.perf_counter()
                    if engine.checkpoint is not None and (
                        last or (self.checkpoint_every and step_number % self.checkpoint_every == 0)
                    ):
                        engine.save(state, data=self.data)
                    if not last and stop.requested(at_log_point=log_point):
                        self._stop(state, step_number, str(stop.signal_name))
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:
            # A second Ctrl-C while stopping, or one outside the main thread: leave at once
            # (the newest complete checkpoint stays the newest one).
            logger.warning("interrupted at step %d without saving", step_number)
            raise
        finally:
            if profiling:
                jax.profiler.stop_trace()
        if engine.checkpoint is not None:
            engine.checkpoint.wait()
        for hook in engine.hooks:
            if hasattr(hook, "on_train_end"):
                hook.on_train_end(engine, state)
        return state

    def _stop(self, state: TrainState, step: int, signal_name: str) -> None:
        """Saves (on every process) and raises :class:`TrainingInterrupted`."""
        engine = self.engine
        logger.warning("%s at step %d: saving and stopping", signal_name, step)
        if engine.checkpoint is not None:
            jax.block_until_ready(state)
            engine.save(state, data=self.data)
            engine.checkpoint.wait()
        engine.state = state
        raise TrainingInterrupted(signal_name, step)

    @staticmethod
    def _status(record: dict[str, float]) -> str:
        parts = []
        if "loss" in record:
            parts.append(f"loss {record['loss']:.4f}")
        if "tokens_per_s" in record:
            parts.append(f"{record['tokens_per_s']:,.0f} tok/s")
        else:
            parts.append(f"{record['samples_per_s']:,.1f} samples/s")
        if "mfu" in record:
            parts.append(f"MFU {100 * record['mfu']:.1f}%")
        return "  ".join(parts)

    def _check_finite(self, host: dict[str, Any], first: int, last: int, state: TrainState) -> None:
        bad = [
            k
            for k, v in host.items()
            if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.all(np.isfinite(v))
        ]
        if not bad:
            return
        engine = self.engine
        message = (
            f"non-finite metric(s) {bad} in steps {first + 1}..{last} "
            f"(nan_policy={engine.nan_policy!r})"
        )
        if engine.nan_policy == "raise":
            raise NonFiniteError(
                message + ". Lower the learning rate, check the data, or use "
                "nan_policy='skip' to skip such updates."
            )
        if engine.nan_policy == "save_and_stop":
            logger.error("%s: saving and stopping", message)
            if engine.checkpoint is not None:
                engine.save(state, data=self.data)
            engine.stop_reason = message
            return
        skipped = int(jax.device_get(state.skipped))
        logger.warning("%s: %d update(s) skipped so far", message, skipped)
