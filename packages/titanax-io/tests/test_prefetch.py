"""prefetch_to_device: global device batches built in a background thread, positions that
track what was consumed, seek, error propagation and shutdown."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from titanax.io import DataError, ShardedLoader, prefetch_to_device, to_global_arrays


@pytest.fixture(scope="module")
def mesh(make_mesh: Callable[..., jax.sharding.Mesh]) -> jax.sharding.Mesh:
    return make_mesh(("data",), (8,))


def loader(**kwargs: Any) -> ShardedLoader:
    data = {"x": np.arange(64 * 3, dtype=np.float32).reshape(64, 3), "i": np.arange(64)}
    return ShardedLoader(data, global_batch_size=16, seed=4, **kwargs)


def test_batches_match_the_loader_and_land_sharded(mesh: jax.sharding.Mesh) -> None:
    sharding = NamedSharding(mesh, P("data"))
    reference = loader()
    with prefetch_to_device(loader(), 2, lambda batch: sharding) as batches:
        for step in range(6):
            batch = next(batches)
            want = next(reference)
            assert batch["x"].sharding == sharding
            assert batch["x"].shape == (16, 3)
            np.testing.assert_array_equal(np.asarray(batch["x"]), want["x"])
            np.testing.assert_array_equal(np.asarray(batch["i"]), want["i"])
            # The position of what was consumed, not of what the thread read ahead.
            assert batches.position == (step + 1) * 16


def test_position_lags_the_source_and_seek_restarts(mesh: jax.sharding.Mesh) -> None:
    source = loader()
    batches = prefetch_to_device(source, 3, NamedSharding(mesh, P("data")))
    first = next(batches)
    assert batches.position == 16
    deadline = time.monotonic() + 30
    while source.position < 16 * 4 and time.monotonic() < deadline:
        time.sleep(0.001)  # the thread fills the queue ahead of the consumer
    assert source.position >= 16 * 4
    assert batches.position == 16
    batches.seek(48)
    assert batches.position == 48
    reference = loader()
    reference.seek(48)
    np.testing.assert_array_equal(np.asarray(next(batches)["i"]), next(reference)["i"])
    assert batches.position == 64
    batches.close()
    batches.close()
    with pytest.raises(StopIteration):
        next(batches)
    with pytest.raises(DataError, match=r"the prefetcher is closed"):
        batches.seek(0)
    assert np.asarray(first["i"]).shape == (16,)


def test_tree_of_shardings_and_mismatch(mesh: jax.sharding.Mesh) -> None:
    shardings = {"x": NamedSharding(mesh, P("data", None)), "i": NamedSharding(mesh, P())}
    with prefetch_to_device(loader(), 1, lambda batch: shardings) as batches:
        batch = next(batches)
    assert batch["i"].sharding == shardings["i"]
    assert batch["x"].sharding == shardings["x"]
    with pytest.raises(DataError, match=r"tree of them with the batch's structure"):
        to_global_arrays({"x": np.zeros(8)}, {"y": shardings["i"]})


def test_errors_surface_in_the_consumer_and_end_of_data(mesh: jax.sharding.Mesh) -> None:
    def broken() -> Iterator[dict[str, np.ndarray]]:
        yield {"x": np.zeros(8)}
        raise ValueError("bad sample 17")

    sharding = NamedSharding(mesh, P("data"))
    batches = prefetch_to_device(broken(), 2, lambda b: sharding)
    next(batches)
    with pytest.raises(
        DataError,
        match=r"batch 1 failed in the prefetch thread while reading the source iterator: "
        r"ValueError: bad sample 17",
    ) as info:
        next(batches)
    assert isinstance(info.value.__cause__, ValueError)  # the original, with its traceback
    assert info.value.__cause__.__traceback__ is not None
    with pytest.raises(StopIteration):
        next(batches)
    with pytest.raises(DataError, match=r"source iterator has no 'position'"):
        _ = batches.position
    with pytest.raises(DataError, match=r"source iterator has no 'seek'"):
        batches.seek(0)
    finite = prefetch_to_device(loader(num_epochs=1), 2, lambda b: sharding)
    assert len(list(finite)) == 4
    assert finite.position == 64


def test_a_failing_sharding_fn_is_named(mesh: jax.sharding.Mesh) -> None:
    def sharding_fn(batch: Any) -> Any:
        raise KeyError("no layout for x")

    with (
        prefetch_to_device(loader(), 2, sharding_fn) as batches,
        pytest.raises(DataError, match=r"batch 0 .* while calling sharding_fn: KeyError"),
    ):
        next(batches)


@pytest.mark.parametrize(
    ("source", "size", "fn", "match"),
    [
        ([], 0, lambda b: None, r"size=0 must be a positive int \(the number of batches"),
        ([], 2.0, lambda b: None, r"size=2.0 must be a positive int"),
        ([], True, lambda b: None, r"size=True must be a positive int"),
        ([], 1, "data", r"must be a callable"),
        (5, 1, lambda b: None, r"iterator must be an iterable of batches .*got int"),
    ],
)
def test_argument_errors(source: Any, size: Any, fn: Any, match: str) -> None:
    with pytest.raises(DataError, match=match):
        prefetch_to_device(source, size, fn)


def test_numpy_int_size(mesh: jax.sharding.Mesh) -> None:
    sharding = NamedSharding(mesh, P("data"))
    with prefetch_to_device(loader(num_epochs=1), np.int64(2), sharding) as batches:  # type: ignore[arg-type]
        assert len(list(batches)) == 4
