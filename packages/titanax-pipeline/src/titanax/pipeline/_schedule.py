"""``Schedule``: a pipeline schedule as a tick table, simulated on the host.

A schedule says, for every tick ``t`` and pipeline stage ``s``, what that stage does: nothing
(idle), the forward ``F`` of one microbatch, or its backward ``B`` — and, for interleaved 1F1B,
on which of the stage's layer chunks. GPipe, 1F1B and interleaved 1F1B differ only in the order
in which each stage takes its ops; the table follows from that order by a unit-time simulation
in which every op runs at the earliest tick after its input arrived (a forward needs the
previous virtual stage's output from an earlier tick, a backward the next virtual stage's
cotangent from an earlier tick). The same table gives the bubble fraction, the peak number of
live microbatches per stage, the stash sizes of the compiled executor and the timeline plot.

Virtual stages: with ``virtual_stages = v`` the layers form ``p·v`` chunks; chunk ``j`` of stage
``s`` is virtual stage ``j·p + s``, so a microbatch travels the ring of stages ``v`` times.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Literal, NamedTuple, TypeAlias

import numpy as np

from titanax.pipeline._errors import PipelineError

__all__ = ["Arrival", "Op", "Schedule", "ScheduleKind", "build_schedule"]


ScheduleKind: TypeAlias = Literal["gpipe", "1f1b", "interleaved"]
_KINDS: tuple[str, ...] = ("gpipe", "1f1b", "interleaved")


class Op(enum.IntEnum):
    """What a stage does in one tick of a :class:`Schedule`."""

    IDLE = 0
    F = 1
    B = 2


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Arrival:
    """One message between stages, as the schedule delivers it.

    A message sent in tick ``tick`` is written into the receiver's buffer at the end of that
    tick and can be used from tick ``tick + 1`` on.

    Attributes:
      tick: tick in which the sender produced the message.
      stage: receiving stage (device index on the pipeline axis).
      kind: ``"activation"`` (a forward output, stored in the stage-input stash) or
        ``"cotangent"`` (a backward's input cotangent, stored in the cotangent buffer until
        the receiver's backward of that microbatch; the last virtual stage differentiates the
        loss itself and receives none).
      microbatch: microbatch index in ``[0, microbatches)``.
      chunk: the receiver's local chunk (virtual stage ``chunk·stages + stage``) that uses it.
      source: sending stage.
      slot: buffer slot the message is written to (stash slot or cotangent slot).
    """

    tick: int
    stage: int
    kind: Literal["activation", "cotangent"]
    microbatch: int
    chunk: int
    source: int
    slot: int


class _Tables(NamedTuple):
    op: np.ndarray  # [T, P] int8, Op values
    microbatch: np.ndarray  # [T, P] int32, -1 when idle
    chunk: np.ndarray  # [T, P] int32, -1 when idle
    x_slot: np.ndarray  # [T, P] int32: stash slot of the stage input (-1: read the inputs)
    g_slot: np.ndarray  # [T, P] int32: cotangent slot read by B (-1: last virtual stage)
    fin_slot: np.ndarray  # [T, P] int32: stash slot of the activation arriving at tick end
    gin_slot: np.ndarray  # [T, P] int32: cotangent slot of the cotangent arriving at tick end
    arrivals: tuple[Arrival, ...]
    stash_size: int
    cotangent_slots: int
    peak_live: tuple[int, ...]


def _stage_orders(kind: str, p: int, m: int, v: int) -> list[list[tuple[Op, int, int]]]:
    """Each stage's ops in execution order, as (op, microbatch, chunk)."""
    orders: list[list[tuple[Op, int, int]]] = []
    for s in range(p):
        order: list[tuple[Op, int, int]] = []
        if kind == "gpipe":
            order = [(Op.F, i, 0) for i in range(m)] + [(Op.B, i, 0) for i in range(m)]
        elif kind == "1f1b":
            # PipeDream-flush: p-s-1 warm-up forwards, then one forward / one backward, then
            # the remaining backwards. With m < p the warm-up is cut to m forwards.
            warmup = min(p - s - 1, m)
            order = [(Op.F, i, 0) for i in range(warmup)]
            for k in range(m - warmup):
                order += [(Op.F, warmup + k, 0), (Op.B, k, 0)]
            order += [(Op.B, k, 0) for k in range(m - warmup, m)]
        else:
            # Megatron-LM's interleaved 1F1B: microbatches go through the chunks in groups of p
            # (forward chunks ascending, backward chunks descending).
            total = m * v

            def fwd(k: int) -> tuple[Op, int, int]:
                return (Op.F, (k // (p * v)) * p + k % p, (k % (p * v)) // p)

            def bwd(k: int) -> tuple[Op, int, int]:
                return (Op.B, (k // (p * v)) * p + k % p, v - 1 - (k % (p * v)) // p)

            warmup = total if m == p else min((p - s - 1) * 2 + (v - 1) * p, total)
            order = [fwd(k) for k in range(warmup)]
            for k in range(total - warmup):
                order += [fwd(warmup + k), bwd(k)]
            order += [bwd(k) for k in range(total - warmup, total)]
        orders.append(order)
    return orders


def _allocate(intervals: list[tuple[int, int, int]]) -> tuple[dict[int, int], int]:
    """Assigns buffer slots to occupancy intervals ``(a, b]`` (id, a, b); returns slots, count.

    A message written at the end of tick ``a`` and read last in tick ``b`` occupies its slot
    from ``a`` to ``b``; a slot read last in tick ``b`` can take a message written at the end
    of ``b``. Greedy by start tick, lowest free slot first — optimal for intervals.
    """
    slots: dict[int, int] = {}
    busy: list[tuple[int, int]] = []  # (end tick, slot)
    free: list[int] = []
    count = 0
    for key, a, b in sorted(intervals, key=lambda iv: (iv[1], iv[2], iv[0])):
        still = []
        for end, slot in busy:
            if end <= a:
                free.append(slot)
            else:
                still.append((end, slot))
        busy = still
        if free:
            free.sort()
            slot = free.pop(0)
        else:
            slot = count
            count += 1
        slots[key] = slot
        busy.append((b, slot))
    return slots, count


def _simulate(kind: str, p: int, m: int, v: int) -> _Tables:
    n_virtual = p * v
    orders = _stage_orders(kind, p, m, v)
    done: dict[tuple[Op, int, int], int] = {}  # (op, microbatch, virtual stage) -> tick
    pointer = [0] * p
    rows: list[list[tuple[Op, int, int] | None]] = []
    limit = 4 * (m * v + p) + 8  # far above 2·(v·m + p − 1); a cycle in the orders stops here
    tick = 0
    while any(pointer[s] < len(orders[s]) for s in range(p)):
        row: list[tuple[Op, int, int] | None] = []
        new: dict[tuple[Op, int, int], int] = {}
        for s in range(p):
            if pointer[s] >= len(orders[s]):
                row.append(None)
                continue
            op, i, j = orders[s][pointer[s]]
            vs = j * p + s
            if op == Op.F:
                ready = vs == 0 or done.get((Op.F, i, vs - 1), tick) < tick
            else:
                ready = done.get((Op.F, i, vs), tick) < tick and (
                    vs == n_virtual - 1 or done.get((Op.B, i, vs + 1), tick) < tick
                )
            if ready:
                new[(op, i, vs)] = tick
                pointer[s] += 1
                row.append((op, i, j))
            else:
                row.append(None)
        if not new or tick > limit:  # pragma: no cover - the built-in orders never deadlock
            raise PipelineError(
                f"build_schedule(kind={kind!r}, stages={p}, microbatches={m}, "
                f"virtual_stages={v}): the stage orders deadlock at tick {tick}; this is a bug "
                "in titanax.pipeline, please report it with these values."
            )
        done.update(new)
        rows.append(row)
        tick += 1

    n_ticks = len(rows)
    shape = (n_ticks, p)
    op_table = np.zeros(shape, np.int8)
    microbatch = np.full(shape, -1, np.int32)
    chunk = np.full(shape, -1, np.int32)
    for t, row in enumerate(rows):
        for s, entry in enumerate(row):
            if entry is not None:
                op_table[t, s], microbatch[t, s], chunk[t, s] = entry

    # Buffers per stage: stage inputs (from arrival until their backward) and cotangents (from
    # arrival until the backward that uses them; the last virtual stage's backward starts from
    # the loss and needs none).
    x_slot = np.full(shape, -1, np.int32)
    g_slot = np.full(shape, -1, np.int32)
    fin_slot = np.full(shape, -1, np.int32)
    gin_slot = np.full(shape, -1, np.int32)
    arrivals: list[Arrival] = []
    stash_size = 0
    cotangent_slots = 0
    peak_live: list[int] = []
    for s in range(p):
        x_iv: list[tuple[int, int, int]] = []
        g_iv: list[tuple[int, int, int]] = []
        live: list[tuple[int, int]] = []
        for j in range(v):
            vs = j * p + s
            for i in range(m):
                key = i * v + j
                t_f, t_b = done[(Op.F, i, vs)], done[(Op.B, i, vs)]
                live.append((t_f, t_b))
                if vs > 0:
                    x_iv.append((key, done[(Op.F, i, vs - 1)], t_b))
                if vs < n_virtual - 1:
                    g_iv.append((key, done[(Op.B, i, vs + 1)], t_b))
        xs, kx = _allocate(x_iv)
        gs, kg = _allocate(g_iv)
        stash_size = max(stash_size, kx)
        cotangent_slots = max(cotangent_slots, kg)
        peak_live.append(max(sum(1 for a, b in live if a <= t <= b) for t in range(n_ticks)))
        for j in range(v):
            vs = j * p + s
            for i in range(m):
                key = i * v + j
                t_f, t_b = done[(Op.F, i, vs)], done[(Op.B, i, vs)]
                if vs > 0:
                    x_slot[t_f, s] = x_slot[t_b, s] = xs[key]
                    t_in = done[(Op.F, i, vs - 1)]
                    fin_slot[t_in, s] = xs[key]
                    arrivals.append(
                        Arrival(
                            tick=t_in,
                            stage=s,
                            kind="activation",
                            microbatch=i,
                            chunk=j,
                            source=(vs - 1) % p,
                            slot=xs[key],
                        )
                    )
                if vs < n_virtual - 1:
                    g_slot[t_b, s] = gs[key]
                    t_in = done[(Op.B, i, vs + 1)]
                    gin_slot[t_in, s] = gs[key]
                    arrivals.append(
                        Arrival(
                            tick=t_in,
                            stage=s,
                            kind="cotangent",
                            microbatch=i,
                            chunk=j,
                            source=(vs + 1) % p,
                            slot=gs[key],
                        )
                    )
    arrivals.sort(key=lambda a: (a.tick, a.stage, a.kind, a.microbatch, a.chunk))
    for array in (op_table, microbatch, chunk, x_slot, g_slot, fin_slot, gin_slot):
        array.flags.writeable = False
    return _Tables(
        op=op_table,
        microbatch=microbatch,
        chunk=chunk,
        x_slot=x_slot,
        g_slot=g_slot,
        fin_slot=fin_slot,
        gin_slot=gin_slot,
        arrivals=tuple(arrivals),
        stash_size=stash_size,
        cotangent_slots=cotangent_slots,
        peak_live=tuple(peak_live),
    )


def _check_count(name: str, value: object, *, kind: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise PipelineError(
            f"Schedule(kind={kind!r}): {name} must be a positive int, got {value!r}."
        )
    return int(value)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Schedule:
    """A pipeline schedule: who does which forward or backward in every tick.

    Built from four numbers; the tick table is simulated in ``__post_init__`` with unit-time
    ops (each stage runs its ops in the schedule's order, each at the earliest tick after its
    input arrived). Equality and hashing use only the four numbers.

    Kinds:
      * ``"gpipe"``: every forward, then every backward (in microbatch order). Each stage keeps
        all ``m`` microbatch inputs alive.
      * ``"1f1b"``: PipeDream-flush — stage ``s`` runs ``p − s − 1`` warm-up forwards, then
        alternates one forward with one backward. At most ``p − s`` microbatches live on stage
        ``s``, independent of ``m``. Needs ``m >= p`` (as PyTorch's ``Schedule1F1B`` and
        ``titanax.sharding.Plan.validate``): with fewer microbatches it degenerates to GPipe.
      * ``"interleaved"``: Megatron-LM's interleaved 1F1B over ``v`` layer chunks per stage
        (stage ``s`` holds virtual stages ``s, s + p, s + 2p, …``); needs ``v >= 2`` and
        ``m % p == 0`` (microbatches travel the ring in groups of ``p``).

    Under unit-time F and B the table has ``2·(v·m + p − 1)`` ticks, so the bubble fraction is
    ``(p − 1)/(m + p − 1)`` for GPipe and 1F1B and ``(p − 1)/(v·m + p − 1)`` interleaved.

    Args:
      kind: ``"gpipe"``, ``"1f1b"`` or ``"interleaved"``.
      stages: pipeline stages ``p`` (devices on the pipeline axis), ``>= 1``.
      microbatches: microbatches ``m`` per step, ``>= 1``.
      virtual_stages: layer chunks per stage ``v``; 1 for GPipe and 1F1B, ``>= 2`` interleaved.

    Attributes:
      op: ``[T, p]`` int8 array of :class:`Op` values (read-only).
      microbatch: ``[T, p]`` int32 microbatch index, ``-1`` where idle.
      chunk: ``[T, p]`` int32 local chunk index (virtual stage ``chunk·p + s``), ``-1`` idle.

    Raises:
      PipelineError: an unknown kind, a non-positive count, ``virtual_stages != 1`` for GPipe
        or 1F1B, ``microbatches < stages`` for 1F1B, ``virtual_stages < 2`` or
        ``microbatches % stages != 0`` for interleaved.

    Example:
      >>> s = Schedule(kind="1f1b", stages=4, microbatches=8)
      >>> s.num_ticks, round(s.bubble_fraction, 4), s.peak_live
      (22, 0.2727, (4, 3, 2, 1))

    References:
      Huang et al., GPipe (2019); Narayanan et al., PipeDream-Flush / 1F1B (2021) and
      Megatron-LM interleaved 1F1B (SC'21); docs/concepts/pipeline.md (Titanax design note).
    """

    kind: ScheduleKind
    stages: int
    microbatches: int
    virtual_stages: int = 1
    _tables: _Tables = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kind = self.kind
        if kind not in _KINDS:
            raise PipelineError(
                f"Schedule: kind {kind!r} is not one of {list(_KINDS)}; use 'gpipe', '1f1b' or "
                "'interleaved' (interleaved 1F1B with virtual_stages >= 2)."
            )
        p = _check_count("stages", self.stages, kind=kind)
        m = _check_count("microbatches", self.microbatches, kind=kind)
        v = _check_count("virtual_stages", self.virtual_stages, kind=kind)
        if kind == "interleaved":
            if v < 2:
                raise PipelineError(
                    f"Schedule(kind='interleaved', stages={p}, microbatches={m}): "
                    f"virtual_stages={v}, but interleaved 1F1B needs virtual_stages >= 2 "
                    "(layer chunks per stage). Use virtual_stages=2, or kind='1f1b'."
                )
            if m % p:
                lower, upper = (m // p) * p, (m // p + 1) * p
                options = [x for x in (lower, upper) if x > 0]
                raise PipelineError(
                    f"Schedule(kind='interleaved', stages={p}, virtual_stages={v}): "
                    f"microbatches={m} is not a multiple of stages={p}; interleaved 1F1B sends "
                    f"microbatches through the chunks in groups of {p} (Megatron-LM's rule). "
                    f"Use microbatches in {options}, or kind='1f1b'."
                )
        elif v != 1:
            raise PipelineError(
                f"Schedule(kind={kind!r}, stages={p}, microbatches={m}): virtual_stages={v}, "
                f"but only kind='interleaved' uses layer chunks; drop virtual_stages or use "
                "kind='interleaved'."
            )
        if kind == "1f1b" and m < p:
            raise PipelineError(
                f"Schedule(kind='1f1b', stages={p}, microbatches={m}): 1F1B needs at least as "
                f"many microbatches as stages (microbatches >= {p}); with fewer, no stage ever "
                "reaches its steady one-forward-one-backward phase and the schedule degenerates "
                f"to GPipe. Fix: use microbatches >= {p}, or kind='gpipe' (same bubble "
                f"{100.0 * (p - 1) / (m + p - 1):.1f}% and memory at microbatches={m})."
            )
        object.__setattr__(self, "stages", p)
        object.__setattr__(self, "microbatches", m)
        object.__setattr__(self, "virtual_stages", v)
        object.__setattr__(self, "_tables", _simulate(kind, p, m, v))

    @classmethod
    def from_pp(cls, pp: Any) -> Schedule:
        """The schedule of a ``titanax.sharding.PP`` record (``schedule``, ``stages``,
        ``microbatches``, ``virtual_stages``).

        Raises:
          PipelineError: ``pp`` lacks one of those attributes, or they are invalid as above.
        """
        missing = [
            name
            for name in ("schedule", "stages", "microbatches", "virtual_stages")
            if not hasattr(pp, name)
        ]
        if missing:
            raise PipelineError(
                f"Schedule.from_pp: {type(pp).__name__} has no attribute(s) {missing}; pass a "
                "titanax.sharding.PP(axis, stages=..., microbatches=..., schedule=..., "
                "virtual_stages=...)."
            )
        return cls(
            kind=pp.schedule,
            stages=pp.stages,
            microbatches=pp.microbatches,
            virtual_stages=pp.virtual_stages,
        )

    # ----- the table -------------------------------------------------------------------------
    @property
    def op(self) -> np.ndarray:
        """``[T, p]`` int8: :class:`Op` value per tick and stage (read-only)."""
        return self._tables.op

    @property
    def microbatch(self) -> np.ndarray:
        """``[T, p]`` int32: microbatch of the op, ``-1`` where idle (read-only)."""
        return self._tables.microbatch

    @property
    def chunk(self) -> np.ndarray:
        """``[T, p]`` int32: local layer chunk of the op, ``-1`` where idle (read-only)."""
        return self._tables.chunk

    @property
    def num_ticks(self) -> int:
        """Ticks ``T`` of the table: ``2·(v·m + p − 1)``."""
        return int(self._tables.op.shape[0])

    @property
    def num_virtual_stages(self) -> int:
        """Virtual stages (layer chunks) over all devices: ``p·v``."""
        return self.stages * self.virtual_stages

    @property
    def bubble_fraction(self) -> float:
        """Idle share of the ``T × p`` stage-ticks under unit-time F and B."""
        op = self._tables.op
        return float(np.count_nonzero(op == Op.IDLE)) / float(op.size)

    @property
    def peak_live(self) -> tuple[int, ...]:
        """Per stage: the most (microbatch, chunk) pairs alive at once, from forward to the end
        of their backward (1F1B: ``p − s``; GPipe: ``m``)."""
        return self._tables.peak_live

    @property
    def stash_size(self) -> int:
        """Stage-input stash slots ``K`` per stage in the compiled executor (max over stages;
        the first virtual stage reads its inputs directly and stashes nothing)."""
        return self._tables.stash_size

    @property
    def cotangent_slots(self) -> int:
        """Cotangent buffer slots per stage in the compiled executor (max over stages)."""
        return self._tables.cotangent_slots

    @property
    def arrivals(self) -> tuple[Arrival, ...]:
        """Every message (activation or cotangent): sent when, to which stage and slot."""
        return self._tables.arrivals

    def stage_order(self, stage: int) -> tuple[tuple[Op, int, int], ...]:
        """The ops of ``stage`` in execution order, as ``(op, microbatch, chunk)``.

        Raises:
          PipelineError: ``stage`` is not in ``[0, stages)``.
        """
        if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < self.stages:
            raise PipelineError(
                f"Schedule.stage_order: stage {stage!r} is not in [0, {self.stages})."
            )
        t = self._tables
        ticks = np.flatnonzero(t.op[:, stage] != Op.IDLE)
        return tuple(
            (Op(int(t.op[k, stage])), int(t.microbatch[k, stage]), int(t.chunk[k, stage]))
            for k in ticks
        )

    def describe(self) -> str:
        """A text timeline: one row per stage, one column per tick (``F3``, ``B0``, ``F3.1`` for
        microbatch 3 on chunk 1, ``.`` idle), with the bubble fraction and stash sizes."""
        t = self._tables
        cells = []
        for s in range(self.stages):
            row = []
            for k in range(self.num_ticks):
                if t.op[k, s] == Op.IDLE:
                    row.append(".")
                    continue
                name = "F" if t.op[k, s] == Op.F else "B"
                cell = f"{name}{t.microbatch[k, s]}"
                if self.virtual_stages > 1:
                    cell += f".{t.chunk[k, s]}"
                row.append(cell)
            cells.append(row)
        width = max(len(c) for row in cells for c in row)
        lines = [
            f"{self.kind} schedule: stages={self.stages}, microbatches={self.microbatches}, "
            f"virtual_stages={self.virtual_stages}; {self.num_ticks} ticks, bubble "
            f"{self.bubble_fraction:.1%}, peak live {list(self.peak_live)}, stash "
            f"{self.stash_size} + cotangent {self.cotangent_slots} slots per stage"
        ]
        for s, row in enumerate(cells):
            lines.append(f"stage {s}: " + " ".join(c.rjust(width) for c in row))
        return "\n".join(lines)


def build_schedule(
    kind: ScheduleKind, *, stages: int, microbatches: int, virtual_stages: int = 1
) -> Schedule:
    """Builds and validates a :class:`Schedule` (same as the constructor, kind positional).

    Args:
      kind: ``"gpipe"``, ``"1f1b"`` or ``"interleaved"``.
      stages: pipeline stages ``p`` (size of the pipeline mesh axis).
      microbatches: microbatches ``m`` per step (the batch is split into ``m`` equal parts).
      virtual_stages: layer chunks per stage (``>= 2``, interleaved only).

    Returns:
      The schedule with its tick table.

    Raises:
      PipelineError: see :class:`Schedule`.

    Example:
      >>> build_schedule("gpipe", stages=2, microbatches=2).describe().splitlines()[1]
      'stage 0: F0 F1  .  . B0 B1'
    """
    return Schedule(
        kind=kind, stages=stages, microbatches=microbatches, virtual_stages=virtual_stages
    )
