"""ShardedLoader and TokenWindows: global shuffle, per-process slices, padding, resumable
positions (also across process counts), every dataset kind, and the errors."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest

from titanax.io import DataError, ShardedLoader, TokenWindows, default_collate


def expected_global_batches(n: int, batch: int, seed: int, epochs: int) -> list[np.ndarray]:
    """The documented order, computed independently: each epoch a fresh permutation from
    ``default_rng([seed, epoch])``, cut into whole global batches."""
    out = []
    for epoch in range(epochs):
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out += [perm[i : i + batch] for i in range(0, n - batch + 1, batch)]
    return out


def read_global(loaders: list[ShardedLoader], key: str = "i") -> np.ndarray:
    """Concatenates one batch from each process's loader (process order) into the global one."""
    return np.concatenate([next(loader)[key] for loader in loaders])


def test_processes_read_disjoint_slices_of_the_global_shuffle() -> None:
    data = {"i": np.arange(23), "x": np.arange(23.0) * 10}
    loaders = [
        ShardedLoader(data, global_batch_size=8, seed=3, process_index=p, process_count=4)
        for p in range(4)
    ]
    want = expected_global_batches(23, 8, seed=3, epochs=3)
    assert loaders[0].batches_per_epoch == 2
    assert loaders[0].samples_per_epoch == 16
    for step, expected in enumerate(want):
        parts = [next(loader) for loader in loaders]
        assert all(part["i"].shape == (2,) for part in parts)
        np.testing.assert_array_equal(np.concatenate([p["i"] for p in parts]), expected)
        np.testing.assert_array_equal(parts[1]["x"], parts[1]["i"] * 10.0)
        assert {loader.position for loader in loaders} == {(step + 1) * 8}
    assert loaders[0].epoch == 3
    # Epochs differ, and within one epoch no sample repeats.
    assert not np.array_equal(want[0], want[2])
    assert len(set(np.concatenate(want[:2]).tolist())) == 16


def test_resume_with_another_process_count_continues_at_the_same_sample() -> None:
    data = {"i": np.arange(40)}
    four = [
        ShardedLoader(data, global_batch_size=8, seed=11, process_index=p, process_count=4)
        for p in range(4)
    ]
    for _ in range(3):
        read_global(four)
    position = four[0].position
    assert position == 24
    continued = [read_global(four) for _ in range(4)]
    two = [
        ShardedLoader(data, global_batch_size=8, seed=11, process_index=p, process_count=2)
        for p in range(2)
    ]
    one = ShardedLoader(data, global_batch_size=8, seed=11, process_index=0, process_count=1)
    for loader in [*two, one]:
        loader.seek(position)
    for expected in continued:  # crosses into the next epoch too
        np.testing.assert_array_equal(read_global(two), expected)
        np.testing.assert_array_equal(next(one)["i"], expected)


def test_unaligned_seek_crosses_epochs_when_dropping_last() -> None:
    loader = ShardedLoader(np.arange(10), global_batch_size=4, seed=0)
    loader.seek(6)  # epoch 0 uses 8 samples; the batch takes 2 of epoch 0 and 2 of epoch 1
    perm0 = np.random.default_rng([0, 0]).permutation(10)
    perm1 = np.random.default_rng([0, 1]).permutation(10)
    np.testing.assert_array_equal(next(loader), np.concatenate([perm0[6:8], perm1[:2]]))
    assert loader.position == 10
    assert loader.epoch == 1


def test_padded_last_batch_carries_a_mask() -> None:
    data = {"i": np.arange(10)}
    loaders = [
        ShardedLoader(
            data,
            global_batch_size=4,
            seed=5,
            shuffle=False,
            drop_last=False,
            process_index=p,
            process_count=2,
        )
        for p in range(2)
    ]
    assert loaders[0].batches_per_epoch == 3
    seen = []
    for _ in range(3):
        parts = [next(loader) for loader in loaders]
        seen.append(
            (
                np.concatenate([p["i"] for p in parts]).tolist(),
                np.concatenate([p["mask"] for p in parts]).tolist(),
            )
        )
    assert seen == [
        ([0, 1, 2, 3], [True] * 4),
        ([4, 5, 6, 7], [True] * 4),
        ([8, 9, 8, 8], [True, True, False, False]),  # padded with the batch's first sample
    ]
    assert loaders[0].position == 10  # real samples only
    assert next(loaders[0])["i"].tolist() == [0, 1]  # epoch 1 starts cleanly


def test_num_epochs_stops_iteration() -> None:
    loader = ShardedLoader(np.arange(9), global_batch_size=4, seed=0, num_epochs=2)
    assert len(list(loader)) == 4
    padded = ShardedLoader(
        {"i": np.arange(9)}, global_batch_size=4, seed=0, drop_last=False, num_epochs=1
    )
    batches = list(padded)
    assert len(batches) == 3
    assert batches[-1]["mask"].tolist() == [True, False, False, False]


def test_seed_and_shuffle() -> None:
    def first(seed: int, shuffle: bool = True) -> list[int]:
        loader = ShardedLoader(np.arange(100), global_batch_size=10, seed=seed, shuffle=shuffle)
        return next(loader).tolist()

    assert first(1) == first(1)
    assert first(1) != first(2)
    assert first(1, shuffle=False) == list(range(10))


def test_records_memmap_and_token_windows(tmp_path: pathlib.Path) -> None:
    tokens = (np.arange(1000) % 251).astype(np.uint16)
    path = tmp_path / "train.bin"
    tokens.tofile(path)
    windows = TokenWindows.from_file(path, seq_len=16)
    assert len(windows) == (1000 - 17) // 16 + 1
    sample = windows[3]
    np.testing.assert_array_equal(sample["inputs"], tokens[48:64].astype(np.int32))
    np.testing.assert_array_equal(sample["targets"], tokens[49:65].astype(np.int32))
    assert sample["inputs"].dtype == np.int32
    assert windows[-1]["targets"][-1] == tokens[(len(windows) - 1) * 16 + 16]
    batched = ShardedLoader(windows, global_batch_size=8, seed=9)
    by_record = ShardedLoader(windows, global_batch_size=8, seed=9, collate=default_collate)
    for _ in range(3):
        a, b = next(batched), next(by_record)
        assert a["inputs"].shape == (8, 16)
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["targets"][:, :-1], a["inputs"][:, 1:])
    overlapping = TokenWindows(tokens[:40], 8, stride=4)
    assert len(overlapping) == 8
    np.testing.assert_array_equal(overlapping[1]["inputs"], tokens[4:12])
    mm = np.memmap(path, dtype=np.uint16, mode="r").reshape(-1, 10)  # a record file
    rows = ShardedLoader(mm, global_batch_size=4, seed=0, shuffle=False)
    np.testing.assert_array_equal(next(rows), tokens[:40].reshape(4, 10))


def test_sequence_of_records_and_custom_collate() -> None:
    records: list[dict[str, Any]] = [{"x": np.full(3, i), "y": i % 2} for i in range(12)]
    loader = ShardedLoader(records, global_batch_size=4, seed=0, shuffle=False, drop_last=False)
    batch = next(loader)
    assert batch["x"].shape == (4, 3)
    assert batch["y"].tolist() == [0, 1, 0, 1]
    assert batch["mask"].all()
    custom = ShardedLoader(
        records,
        global_batch_size=4,
        seed=0,
        shuffle=False,
        collate=lambda rs: {"sum": np.asarray([r["x"].sum() for r in rs])},
    )
    assert next(custom)["sum"].tolist() == [0, 3, 6, 9]


@pytest.mark.parametrize(
    ("dataset", "kwargs", "match"),
    [
        (
            np.arange(10),
            {"global_batch_size": 6, "process_count": 4},
            r"global_batch_size=6 "
            r"does not divide over process_count=4 .* e\.g\. \[4, 8\]",
        ),
        (np.arange(3), {"global_batch_size": 4}, r"has 3 samples, fewer than one global batch"),
        (np.arange(8), {"global_batch_size": 4, "drop_last": False}, r"needs dict batches"),
        (
            np.arange(8),
            {"global_batch_size": 2, "process_index": 2, "process_count": 2},
            r"process_index=2 is not below process_count=2",
        ),
        (
            {"a": np.arange(4), "b": np.arange(5)},
            {"global_batch_size": 2},
            r"different lengths \{'a': 4, 'b': 5\}",
        ),
        (np.arange(0), {"global_batch_size": 1}, r"dataset is empty"),
        (42, {"global_batch_size": 1}, r"type int is not indexable"),
        (np.arange(8), {"global_batch_size": 0}, r"global_batch_size=0 must be an int >= 1"),
        (np.arange(8), {"global_batch_size": 2, "seed": -1}, r"seed=-1 must be an int >= 0"),
        ({}, {"global_batch_size": 2}, r"dict dataset has no columns"),
    ],
)
def test_loader_errors(dataset: Any, kwargs: dict[str, Any], match: str) -> None:
    kwargs.setdefault("seed", 0)
    with pytest.raises(DataError, match=match):
        ShardedLoader(dataset, **kwargs)


def test_padded_records_must_be_dicts_and_seek_is_checked() -> None:
    loader = ShardedLoader([1, 2, 3], global_batch_size=2, seed=0, drop_last=False)
    with pytest.raises(DataError, match=r"batches must be dicts without a 'mask' key; got ndarray"):
        next(loader)
    masked = ShardedLoader({"mask": np.arange(4)}, global_batch_size=2, seed=0, drop_last=False)
    with pytest.raises(DataError, match=r"got dict with mask"):
        next(masked)
    with pytest.raises(DataError, match=r"position=-3 must be an int >= 0"):
        loader.seek(-3)
    assert "position=0" in repr(loader)


def test_token_windows_errors() -> None:
    with pytest.raises(DataError, match=r"tokens must be 1-D"):
        TokenWindows(np.zeros((2, 2)), 1)
    with pytest.raises(DataError, match=r"seq_len=0 must be a positive int"):
        TokenWindows(np.arange(10), 0)
    with pytest.raises(DataError, match=r"5 tokens cannot make one window of seq_len=5"):
        TokenWindows(np.arange(5), 5)
    windows = TokenWindows(np.arange(20), 4)
    with pytest.raises(IndexError, match=r"index 4 out of range for 4 windows"):
        windows[4]
    with pytest.raises(IndexError, match=r"outside \[0, 4\)"):
        windows.__getitems__([0, 9])
    with pytest.raises(DataError, match=r"index 1.5 must be an int"):
        windows[1.5]  # type: ignore[index]


@pytest.mark.parametrize(
    ("tokens", "kwargs", "match"),
    [
        (np.linspace(0, 1, 20), {}, r"tokens have dtype float64; token ids must be integers"),
        (np.ones(20, bool), {}, r"tokens have dtype bool; token ids must be integers"),
        (np.arange(20), {"dtype": np.float32}, r"dtype=float32 is not an integer dtype"),
        (np.arange(20), {"dtype": "nope"}, r"dtype='nope' is not a NumPy dtype"),
    ],
)
def test_token_windows_take_integer_ids_only(
    tokens: np.ndarray, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(DataError, match=match):
        TokenWindows(tokens, 4, **kwargs)


def test_token_file_errors(tmp_path: pathlib.Path) -> None:
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00" * 10 + b"\x07")  # 21 bytes: a cut uint16 file
    (tmp_path / "empty.bin").write_bytes(b"")
    cases = [
        (tmp_path / "missing.bin", {}, r"missing.bin does not exist"),
        (tmp_path, {}, r"is not a regular file"),
        (tmp_path / "empty.bin", {}, r"empty.bin is empty"),
        (odd, {}, r"has 21 bytes, not a multiple of 2 \(the item size of token_dtype=uint16\)"),
        (odd, {"token_dtype": np.float32}, r"token_dtype=float32 is not an integer dtype"),
    ]
    for path, kwargs, match in cases:
        with pytest.raises(DataError, match=r"TokenWindows.from_file\(.*\): .*" + match):
            TokenWindows.from_file(path, 4, **kwargs)
    windows = TokenWindows.from_file(odd, 4, token_dtype=np.uint8)  # bytes: any size fits
    assert windows[0]["inputs"].tolist() == [1, 0, 1, 0]
