"""``step_fn``: how a training or evaluation step sees its data, and its compile options.

A step is a plain function ``fn(state, batch, **static) -> (state, metrics)`` (training) or
``-> metrics`` (evaluation). ``step_fn`` records how the Engine compiles it:

* ``view="global"`` — ``jax.jit`` over global arrays with shardings from the plan; the function
  is written as for one device and XLA inserts the collectives the layouts imply.
* ``view="per_device"`` — ``jax.shard_map`` over the whole mesh with specs from the plan; the
  function sees each device's shard and writes its collectives explicitly with
  ``titanax.mesh.collectives`` (``pmean`` of the gradients over the data axes, ...). Gradients of
  replicated parameters are per device (``check_vma=False``: the only reductions are the ones
  written), as in ``pmap``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

from titanax.exec._errors import ExecError
from titanax.exec._remat import RematPolicy, normalize_remat

__all__ = ["StepFunction", "step_fn"]

View = Literal["global", "per_device"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepFunction:
    """A step function plus how to compile it (see :func:`step_fn`).

    Calling it calls the wrapped function directly (eager, no Engine), which is handy in tests.
    """

    fn: Callable[..., Any]
    view: View = "global"
    kind: Literal["train", "eval"] = "train"
    donate: bool = True
    static_argnames: tuple[str, ...] = ()
    remat: str | tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.view not in ("global", "per_device"):
            raise ExecError(
                f"step_fn: view={self.view!r} must be 'global' (jax.jit with shardings) or "
                "'per_device' (jax.shard_map with explicit collectives)."
            )
        if self.kind not in ("train", "eval"):
            raise ExecError(f"step_fn: kind={self.kind!r} must be 'train' or 'eval'.")
        if not callable(self.fn):
            raise ExecError(f"step_fn: {self.fn!r} is not callable.")
        object.__setattr__(self, "remat", normalize_remat(self.remat))
        object.__setattr__(self, "static_argnames", tuple(self.static_argnames))

    @property
    def name(self) -> str:
        """The wrapped function's name (for logs and recompile reports)."""
        return getattr(self.fn, "__name__", repr(self.fn))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


@overload
def step_fn(
    fn: Callable[..., Any],
    *,
    view: View = ...,
    kind: Literal["train", "eval"] = ...,
    donate: bool | None = ...,
    static_argnames: Sequence[str] = ...,
    remat: RematPolicy = ...,
) -> StepFunction: ...


@overload
def step_fn(
    fn: None = ...,
    *,
    view: View = ...,
    kind: Literal["train", "eval"] = ...,
    donate: bool | None = ...,
    static_argnames: Sequence[str] = ...,
    remat: RematPolicy = ...,
) -> Callable[[Callable[..., Any]], StepFunction]: ...


def step_fn(
    fn: Callable[..., Any] | None = None,
    *,
    view: View = "global",
    kind: Literal["train", "eval"] = "train",
    donate: bool | None = None,
    static_argnames: Sequence[str] = (),
    remat: RematPolicy = None,
) -> StepFunction | Callable[[Callable[..., Any]], StepFunction]:
    """Declares a step for the Engine; usable as ``@step_fn`` or ``@step_fn(view=...)``.

    Args:
      fn: ``fn(state, batch, **static)`` returning ``(state, metrics)`` for ``kind="train"`` or
        ``metrics`` for ``kind="eval"``; ``metrics`` is a dict of scalars.
      view: ``"global"`` or ``"per_device"`` (see the module docstring).
      kind: ``"train"`` (returns a new state, which is donated) or ``"eval"``.
      donate: donate the input state's buffers (default: True for train, False for eval).
      static_argnames: keyword arguments that are Python values baked into the program (each
        distinct value compiles once).
      remat: activation checkpointing policy exposed to the step as ``state.remat``.

    Returns:
      A :class:`StepFunction` (or a decorator producing one).

    Raises:
      ExecError: an unknown view, kind or remat policy.
    """

    def wrap(f: Callable[..., Any]) -> StepFunction:
        step = StepFunction(
            fn=f,
            view=view,
            kind=kind,
            donate=(kind == "train") if donate is None else donate,
            static_argnames=tuple(static_argnames),
            remat=remat,
        )
        return step

    return wrap if fn is None else wrap(fn)
