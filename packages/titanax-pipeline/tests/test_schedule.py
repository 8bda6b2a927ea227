"""Schedule tables: tick counts, bubbles, live microbatches, slots, validation, plots."""

from __future__ import annotations

import dataclasses
import itertools
import struct
from pathlib import Path

import numpy as np
import pytest

from titanax.pipeline import (
    Op,
    PipelineError,
    Schedule,
    build_schedule,
    plot_schedule,
)

KINDS = [("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("interleaved", 3)]
SIZES = [(p, m) for p in (1, 2, 3, 4, 8) for m in (1, 2, 3, 4, 6, 8, 16, 32)]


def _valid(kind: str, p: int, m: int, v: int) -> bool:
    if kind == "interleaved":
        return m % p == 0
    return kind == "gpipe" or m >= p


def _all_schedules() -> list[Schedule]:
    return [
        build_schedule(kind, stages=p, microbatches=m, virtual_stages=v)
        for (kind, v), (p, m) in itertools.product(KINDS, SIZES)
        if _valid(kind, p, m, v)
    ]


SCHEDULES = _all_schedules()


def _done_ticks(s: Schedule) -> dict[tuple[int, int, int], int]:
    """(op, microbatch, virtual stage) -> tick, read back from the table."""
    done = {}
    for t, st in zip(*np.nonzero(s.op != Op.IDLE), strict=True):
        key = (int(s.op[t, st]), int(s.microbatch[t, st]), int(s.chunk[t, st]) * s.stages + st)
        assert key not in done, f"{key} runs twice"
        done[key] = int(t)
    return done


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_every_op_runs_once_after_its_inputs(schedule: Schedule) -> None:
    p, m, v = schedule.stages, schedule.microbatches, schedule.virtual_stages
    n_virtual = p * v
    done = _done_ticks(schedule)
    assert len(done) == 2 * m * n_virtual
    for i, q in itertools.product(range(m), range(n_virtual)):
        f, b = done[(Op.F, i, q)], done[(Op.B, i, q)]
        assert f < b
        if q > 0:
            assert done[(Op.F, i, q - 1)] < f
        if q < n_virtual - 1:
            assert done[(Op.B, i, q + 1)] < b


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_ticks_and_bubble_match_the_closed_form(schedule: Schedule) -> None:
    p, m, v = schedule.stages, schedule.microbatches, schedule.virtual_stages
    assert schedule.num_ticks == 2 * (v * m + p - 1)
    assert schedule.op.shape == (schedule.num_ticks, p)
    expected = (p - 1) / (v * m + p - 1)
    assert schedule.bubble_fraction == pytest.approx(expected, rel=1e-12)
    idle = np.count_nonzero(schedule.op == Op.IDLE) / schedule.op.size
    assert schedule.bubble_fraction == idle


@pytest.mark.parametrize("p", [2, 4, 8])
@pytest.mark.parametrize("m", [8, 16, 32])
def test_peak_live_microbatches(p: int, m: int) -> None:
    one_f_one_b = build_schedule("1f1b", stages=p, microbatches=m)
    gpipe = build_schedule("gpipe", stages=p, microbatches=m)
    assert one_f_one_b.peak_live == tuple(min(p - s, m) for s in range(p))
    assert gpipe.peak_live == (m,) * p
    # Stage inputs: 1F1B bounded by the stage count, GPipe holds all m.
    assert one_f_one_b.stash_size <= p
    assert gpipe.stash_size == m
    assert one_f_one_b.cotangent_slots == 1


@pytest.mark.parametrize("m", [1, 2, 3])
def test_1f1b_with_fewer_microbatches_than_stages_raises(m: int) -> None:
    """Decision: 1F1B with m < p is an error (as PyTorch's Schedule1F1B); GPipe accepts it."""
    with pytest.raises(
        PipelineError,
        match=rf"Schedule\(kind='1f1b', stages=4, microbatches={m}\): 1F1B needs at least as "
        r"many microbatches as stages \(microbatches >= 4\).*Fix: use microbatches >= 4, or "
        rf"kind='gpipe' \(same bubble {100 * 3 / (m + 3):.1f}%",
    ):
        build_schedule("1f1b", stages=4, microbatches=m)
    gpipe = build_schedule("gpipe", stages=4, microbatches=m)
    assert gpipe.bubble_fraction == pytest.approx(3 / (m + 3))
    _replay_slots(gpipe)


def test_known_tables() -> None:
    gpipe = build_schedule("gpipe", stages=2, microbatches=2)
    assert gpipe.describe().splitlines()[1:] == [
        "stage 0: F0 F1  .  . B0 B1",
        "stage 1:  . F0 F1 B0 B1  .",
    ]
    ofob = build_schedule("1f1b", stages=4, microbatches=8)
    assert [f"{op.name}{i}" for op, i, _ in ofob.stage_order(1)] == [
        "F0", "F1", "F2", "B0", "F3", "B1", "F4", "B2", "F5", "B3", "F6", "B4", "F7", "B5",
        "B6", "B7",
    ]  # fmt: skip
    inter = build_schedule("interleaved", stages=2, microbatches=4, virtual_stages=2)
    assert inter.stage_order(0)[:4] == ((Op.F, 0, 0), (Op.F, 1, 0), (Op.F, 0, 1), (Op.F, 1, 1))
    assert "F0.0" in inter.describe()
    assert inter.num_virtual_stages == 4


def _replay_slots(s: Schedule) -> None:
    """Plays the executor's buffers: every read finds the (microbatch, chunk) the op expects."""
    t = s._tables
    p, v = s.stages, s.virtual_stages
    stash = [dict[int, tuple[int, int]]() for _ in range(p)]
    gbuf = [dict[int, tuple[int, int]]() for _ in range(p)]
    for tick in range(s.num_ticks):
        for st in range(p):
            op = int(t.op[tick, st])
            if op == Op.IDLE:
                continue
            want = (int(t.microbatch[tick, st]), int(t.chunk[tick, st]))
            q = want[1] * p + st
            if q == 0:
                assert t.x_slot[tick, st] == -1
            else:
                assert stash[st][int(t.x_slot[tick, st])] == want
            if op == Op.B and q < p * v - 1:
                assert gbuf[st][int(t.g_slot[tick, st])] == want
        for a in s.arrivals:
            if a.tick == tick:
                buffer = stash if a.kind == "activation" else gbuf
                size = s.stash_size if a.kind == "activation" else s.cotangent_slots
                assert 0 <= a.slot < size
                buffer[a.stage][a.slot] = (a.microbatch, a.chunk)
                column = t.fin_slot if a.kind == "activation" else t.gin_slot
                assert column[tick, a.stage] == a.slot


@pytest.mark.parametrize("schedule", SCHEDULES[::3], ids=repr)
def test_slots_never_overwrite_a_live_message(schedule: Schedule) -> None:
    _replay_slots(schedule)


def test_arrivals_list_every_message() -> None:
    s = build_schedule("interleaved", stages=2, microbatches=2, virtual_stages=2)
    # Per microbatch: 3 forward hand-offs and 3 backward hand-offs between 4 virtual stages.
    assert len(s.arrivals) == 2 * 2 * 3
    first = s.arrivals[0]
    assert (first.tick, first.stage, first.kind, first.microbatch, first.chunk) == (
        0,
        1,
        "activation",
        0,
        0,
    )
    assert first.source == 0
    ring = [a for a in s.arrivals if a.kind == "activation" and a.stage == 0]
    assert ring
    assert all(a.source == 1 and a.chunk == 1 for a in ring)


def test_schedule_is_frozen_hashable_and_compares_by_config() -> None:
    a = build_schedule("1f1b", stages=2, microbatches=4)
    b = Schedule(kind="1f1b", stages=2, microbatches=4)
    assert a == b
    assert hash(a) == hash(b)
    assert a != build_schedule("gpipe", stages=2, microbatches=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.stages = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        a.op[0, 0] = 2
    assert repr(a) == "Schedule(kind='1f1b', stages=2, microbatches=4, virtual_stages=1)"


def test_from_pp_record() -> None:
    sharding = pytest.importorskip("titanax.sharding")
    pp = sharding.PP("pipeline", stages=2, microbatches=4, schedule="interleaved", virtual_stages=2)
    assert Schedule.from_pp(pp) == build_schedule(
        "interleaved", stages=2, microbatches=4, virtual_stages=2
    )


def test_from_pp_duck_typed_record() -> None:
    @dataclasses.dataclass
    class Record:
        schedule: str = "gpipe"
        stages: int = 2
        microbatches: int = 3
        virtual_stages: int = 1

    assert Schedule.from_pp(Record()).num_ticks == 2 * (3 + 1)
    with pytest.raises(PipelineError, match=r"Schedule.from_pp: int has no attribute\(s\)"):
        Schedule.from_pp(3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"kind": "zb", "stages": 2, "microbatches": 2},
            r"kind 'zb' is not one of \['gpipe', '1f1b', 'interleaved'\]",
        ),
        (
            {"kind": "1f1b", "stages": 0, "microbatches": 2},
            r"stages must be a positive int, got 0",
        ),
        (
            {"kind": "1f1b", "stages": 2, "microbatches": 2.0},
            r"microbatches must be a positive int, got 2.0",
        ),
        (
            {"kind": "gpipe", "stages": 2, "microbatches": 2, "virtual_stages": True},
            r"virtual_stages must be a positive int, got True",
        ),
        (
            {"kind": "interleaved", "stages": 2, "microbatches": 4, "virtual_stages": 1},
            r"virtual_stages=1, but interleaved 1F1B needs virtual_stages >= 2",
        ),
        (
            {"kind": "interleaved", "stages": 4, "microbatches": 6, "virtual_stages": 2},
            r"microbatches=6 is not a multiple of stages=4.*Use microbatches in \[4, 8\]",
        ),
        (
            {"kind": "interleaved", "stages": 4, "microbatches": 3, "virtual_stages": 2},
            r"microbatches=3 is not a multiple of stages=4.*Use microbatches in \[4\]",
        ),
        (
            {"kind": "1f1b", "stages": 2, "microbatches": 4, "virtual_stages": 2},
            r"virtual_stages=2, but only kind='interleaved' uses layer chunks",
        ),
    ],
)
def test_invalid_schedules_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(PipelineError, match=match):
        Schedule(**kwargs)  # type: ignore[arg-type]


def test_stage_order_rejects_a_bad_stage() -> None:
    with pytest.raises(PipelineError, match=r"stage 2 is not in \[0, 2\)"):
        build_schedule("gpipe", stages=2, microbatches=2).stage_order(2)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plot_schedule_writes_a_png(tmp_path: Path) -> None:
    small = plot_schedule(build_schedule("1f1b", stages=2, microbatches=2), tmp_path / "a.png")
    big = plot_schedule(
        build_schedule("interleaved", stages=4, microbatches=4, virtual_stages=2),
        tmp_path / "sub" / "b.png",
        title="custom",
    )
    assert small == tmp_path / "a.png"
    w_small, h_small = _png_size(small)
    w_big, h_big = _png_size(big)
    assert w_big > w_small
    assert h_big > h_small
    # More microbatches than a qualitative colormap has colors.
    plot_schedule(build_schedule("gpipe", stages=1, microbatches=21), tmp_path / "many.png")


def test_plot_schedule_errors(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"does not end in '\.png'"):
        plot_schedule(build_schedule("1f1b", stages=2, microbatches=2), tmp_path / "a.svg")
    with pytest.raises(PipelineError, match=r"schedule must be a titanax\.pipeline\.Schedule"):
        plot_schedule("1f1b", tmp_path / "a.png")  # type: ignore[arg-type]
