"""Data sources: the stdlib byte corpus (split, cache, entropy), digits, MNIST IDX, synthetic."""

from __future__ import annotations

import gzip
import itertools
import math
import pathlib
import sysconfig
import zlib

import numpy as np
import pytest

from titanax.cli import CLIError, DataConfig, GPTModel, MLPModel
from titanax.cli._data import load_splits, stdlib_files, unigram_entropy

MODEL = GPTModel(vocab_size=256, seq_len=16, d_model=16, n_heads=2, n_layers=1)


def test_unigram_entropy_matches_the_formula() -> None:
    assert unigram_entropy(np.array([1.0, 1.0, 0.0])) == pytest.approx(math.log(2))
    counts = np.array([5.0, 3.0, 2.0])
    p = counts / 10
    assert unigram_entropy(counts) == pytest.approx(-(p * np.log(p)).sum())


def test_stdlib_files_are_sorted_py_sources_without_site_packages() -> None:
    root, files = stdlib_files()
    assert root == pathlib.Path(sysconfig.get_paths()["stdlib"])
    assert files == sorted(files)
    assert len(files) > 500
    assert all(f.endswith(".py") and "site-packages" not in f for f in files)
    assert "os.py" in files
    _, few = stdlib_files(max_bytes=1)
    assert few == files[:1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataConfig, pathlib.Path]:
    cache = tmp_path_factory.mktemp("cache")
    config = DataConfig(
        source="stdlib_bytes", max_bytes=400_000, valid_percent=20.0, cache_dir=str(cache)
    )
    return config, cache


def test_stdlib_split_is_the_fixed_hash_of_each_path(
    corpus: tuple[DataConfig, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    config, _ = corpus
    splits = load_splits(config, MODEL, run_dir=tmp_path)
    root, files = stdlib_files(max_bytes=400_000)
    valid = [f for f in files if zlib.crc32(f.encode()) % 10_000 < 2_000]
    train = [f for f in files if f not in valid]
    assert valid
    assert train
    expected = {
        "train": b"".join((root / f).read_bytes() for f in train),
        "valid": b"".join((root / f).read_bytes() for f in valid),
    }
    for name, windows in (("train", splits.train), ("valid", splits.valid)):
        tokens = np.asarray(windows._tokens)
        assert tokens.dtype == np.uint8
        assert tokens.tobytes() == expected[name]
        assert len(windows) == (len(expected[name]) - 17) // 16 + 1
    everything = np.frombuffer(expected["train"] + expected["valid"], np.uint8)
    counts = np.bincount(everything, minlength=256).astype(np.float64)
    assert splits.stats["unigram_entropy"] == pytest.approx(unigram_entropy(counts))
    assert splits.stats["corpus_bytes"] == everything.size
    train_counts = np.bincount(np.frombuffer(expected["train"], np.uint8), minlength=256) + 1.0
    valid_bytes = np.frombuffer(expected["valid"], np.uint8)
    cross = -np.log(train_counts / train_counts.sum())[valid_bytes].mean()
    assert splits.stats["valid_unigram_cross_entropy"] == pytest.approx(cross)
    assert "unigram entropy" in splits.summary[1]
    batch = splits.train.__getitems__(np.array([0, 3]))
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])


def test_stdlib_cache_is_reused(
    corpus: tuple[DataConfig, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    config, cache = corpus
    load_splits(config, MODEL, run_dir=tmp_path)
    (entry,) = cache.glob("stdlib_bytes-*")
    stamps = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    again = load_splits(config, MODEL, run_dir=tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == stamps
    assert isinstance(again.train._tokens, np.memmap)


def test_stdlib_cache_defaults_to_the_run_directory(tmp_path: pathlib.Path) -> None:
    config = DataConfig(source="stdlib_bytes", max_bytes=50_000, valid_percent=50.0)
    load_splits(config, MODEL, run_dir=tmp_path / "run")
    assert len(list((tmp_path / "run" / "data").glob("stdlib_bytes-*/train.npy"))) == 1


def test_stdlib_split_with_an_empty_side_is_refused(tmp_path: pathlib.Path) -> None:
    config = DataConfig(source="stdlib_bytes", max_bytes=1, valid_percent=0.01)
    with pytest.raises(CLIError, match=r"left one side empty"):
        load_splits(config, MODEL, run_dir=tmp_path)


def test_digits_are_split_deterministically(tmp_path: pathlib.Path) -> None:
    config = DataConfig(source="digits", batch_size=32, valid_percent=10.0)
    splits = load_splits(config, MLPModel(), run_dir=tmp_path)
    assert splits.kind == "images"
    assert splits.image_shape == (8, 8)
    assert len(splits.valid["y"]) == 180
    assert len(splits.train["y"]) == 1797 - 180
    assert splits.train["x"].shape == (1617, 8, 8)
    assert splits.train["x"].dtype == np.float32
    assert 0.0 <= splits.train["x"].min() <= splits.train["x"].max() <= 1.0
    again = load_splits(config, MLPModel(), run_dir=tmp_path)
    np.testing.assert_array_equal(again.valid["y"], splits.valid["y"])


def _idx(path: pathlib.Path, array: np.ndarray, *, gz: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def test_mnist_idx_files_are_read(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 28, 28))
    labels = rng.integers(0, 10, size=12)
    _idx(tmp_path / "train-images-idx3-ubyte", images, gz=True)
    _idx(tmp_path / "train-labels-idx1-ubyte", labels, gz=False)
    _idx(tmp_path / "t10k-images-idx3-ubyte", images[:4], gz=False)
    _idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:4], gz=True)
    config = DataConfig(source="mnist_idx", path=str(tmp_path))
    splits = load_splits(config, MLPModel(), run_dir=tmp_path)
    assert splits.image_shape == (28, 28)
    np.testing.assert_allclose(splits.train["x"], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(splits.valid["y"], labels[:4])


def test_mnist_idx_problems(tmp_path: pathlib.Path) -> None:
    config = DataConfig(source="mnist_idx", path=str(tmp_path / "none"))
    with pytest.raises(CLIError, match=r"data\.path .* \(mnist_idx\) is not a directory"):
        load_splits(config, MLPModel(), run_dir=tmp_path)
    config = DataConfig(source="mnist_idx", path=str(tmp_path))
    with pytest.raises(CLIError, match=r"has no train-images-idx3-ubyte \(nor their \.gz\)"):
        load_splits(config, MLPModel(), run_dir=tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(CLIError, match=r"is not an unsigned-byte IDX file"):
        load_splits(config, MLPModel(), run_dir=tmp_path)


def test_synthetic_tokens_follow_their_markov_chain(tmp_path: pathlib.Path) -> None:
    model = GPTModel(vocab_size=32, seq_len=8, d_model=16, n_heads=2, n_layers=1)
    config = DataConfig(source="synthetic", num_samples=64, valid_percent=25.0)
    splits = load_splits(config, model, run_dir=tmp_path)
    tokens = np.asarray(splits.train._tokens).astype(np.int64)
    assert tokens.size == 64 * 8 + 1
    assert tokens.max() < 32
    successors: dict[int, set[int]] = {}
    for a, b in itertools.pairwise(tokens):
        successors.setdefault(int(a), set()).add(int(b))
    assert max(len(s) for s in successors.values()) <= 4
    images = load_splits(config, MLPModel(), run_dir=tmp_path)
    assert images.train["x"].shape == (48, 8, 8)
    assert len(images.valid["y"]) == 16
