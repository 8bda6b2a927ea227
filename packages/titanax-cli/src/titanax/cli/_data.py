"""The data sources of ``titanax run``: byte-level stdlib text, digits, MNIST IDX, synthetic.

Every source yields a train and a validation split in a form ``titanax.io.ShardedLoader`` reads:
:class:`titanax.io.TokenWindows` over a 1-D ``uint8`` token array (language modelling) or a dict
``{"x": [n, H, W] float32, "y": [n] int32}`` (classification).

``stdlib_bytes`` is the corpus of the main job: every ``.py`` file of this interpreter's standard
library (``sysconfig.get_paths()["stdlib"]``, without ``site-packages``), sorted by path, each
file assigned to train or validation by a fixed hash of its relative path (CRC-32), concatenated
as bytes (vocabulary 256) and cached as ``.npy`` files read through ``np.memmap``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import math
import os
import pathlib
import sys
import sysconfig
import zlib
from typing import Any, Literal

import numpy as np

from titanax.cli._config import DataConfig, ModelConfig, token_geometry
from titanax.cli._errors import CLIError

__all__ = ["Splits", "load_splits", "mnist_problem", "stdlib_files", "unigram_entropy"]

logger = logging.getLogger("titanax.cli")

_EXCLUDED_DIRS = ("site-packages", "dist-packages", "__pycache__")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Splits:
    """A source's train and validation splits.

    Attributes:
      kind: ``"tokens"`` (``TokenWindows``) or ``"images"`` (``{"x", "y"}`` arrays).
      train: the training dataset for ``ShardedLoader``.
      valid: the validation dataset.
      image_shape: ``(H, W)`` of the images (``()`` for tokens).
      num_classes: label count (images), or the vocabulary size (tokens).
      summary: lines describing the data, printed before training.
      stats: numbers about the data (``"unigram_entropy"`` in nats/byte for text, ...).
    """

    kind: Literal["tokens", "images"]
    train: Any
    valid: Any
    image_shape: tuple[int, ...]
    num_classes: int
    summary: tuple[str, ...]
    stats: dict[str, float]

    @staticmethod
    def samples(dataset: Any) -> int:
        """Samples of a split (rows of a ``{"x", "y"}`` dict, windows of ``TokenWindows``)."""
        if isinstance(dataset, dict):
            return len(next(iter(dataset.values())))
        return len(dataset)


def unigram_entropy(counts: np.ndarray) -> float:
    """Entropy in nats of the distribution ``counts / counts.sum()`` (zeros skipped)."""
    total = float(counts.sum())
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def stdlib_files(max_bytes: int | None = None) -> tuple[pathlib.Path, list[str]]:
    """The standard library root and its ``.py`` files (relative POSIX paths, sorted).

    ``site-packages``, ``dist-packages`` and ``__pycache__`` are left out. With ``max_bytes`` only
    the first files whose sizes add up to at least that many bytes are kept.
    """
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    found: list[str] = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in _EXCLUDED_DIRS]  # prune, do not descend
        base = pathlib.Path(directory).relative_to(root)
        found += [(base / n).as_posix() for n in names if n.endswith(".py")]
    files = sorted(found)
    if max_bytes is not None:
        kept: list[str] = []
        total = 0
        for rel in files:
            if total >= max_bytes:
                break
            kept.append(rel)
            total += (root / rel).stat().st_size
        files = kept
    return root, files


def _is_valid(rel: str, valid_percent: float) -> bool:
    """The fixed split: a file is held out when CRC-32 of its path mod 10,000 falls below."""
    return zlib.crc32(rel.encode("utf-8")) % 10_000 < round(valid_percent * 100)


def _save_atomic(path: pathlib.Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)


def _build_stdlib(config: DataConfig, cache: pathlib.Path) -> tuple[pathlib.Path, dict[str, Any]]:
    root, files = stdlib_files(config.max_bytes)
    if not files:
        raise CLIError(f"data.source stdlib_bytes: no .py files found under {root}.")
    listing = [(rel, (root / rel).stat().st_size) for rel in files]
    key = hashlib.sha256(
        json.dumps(
            [str(root), sys.version, config.valid_percent, config.max_bytes, listing]
        ).encode()
    ).hexdigest()[:16]
    where = cache / f"stdlib_bytes-{key}"
    meta_file = where / "meta.json"
    if meta_file.is_file():
        return where, dict(json.loads(meta_file.read_text()))
    where.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list[bytes]] = {"train": [], "valid": []}
    names: dict[str, int] = {"train": 0, "valid": 0}
    for rel, _ in listing:
        split = "valid" if _is_valid(rel, config.valid_percent) else "train"
        parts[split].append((root / rel).read_bytes())
        names[split] += 1
    if not parts["valid"] or not parts["train"]:
        raise CLIError(
            f"data.source stdlib_bytes: the split of {len(files)} files at valid_percent="
            f"{config.valid_percent} left one side empty; use more files (max_bytes) or another "
            "valid_percent."
        )
    arrays = {s: np.frombuffer(b"".join(p), dtype=np.uint8) for s, p in parts.items()}
    counts = {s: np.bincount(a, minlength=256).astype(np.float64) for s, a in arrays.items()}
    smoothed = (counts["train"] + 1.0) / (counts["train"].sum() + 256.0)
    meta = {
        "root": str(root),
        "python": sys.version.split()[0],
        "files": {s: names[s] for s in names},
        "bytes": {s: int(a.size) for s, a in arrays.items()},
        "unigram_entropy": unigram_entropy(counts["train"] + counts["valid"]),
        "valid_unigram_cross_entropy": float(
            -(counts["valid"] * np.log(smoothed)).sum() / counts["valid"].sum()
        ),
    }
    for split, array in arrays.items():
        _save_atomic(where / f"{split}.npy", array)
    tmp = where / f".meta.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_file)
    return where, meta


def _stdlib(config: DataConfig, seq_len: int, cache: pathlib.Path) -> Splits:
    from titanax.io import TokenWindows

    where, meta = _build_stdlib(config, cache)
    train = np.load(where / "train.npy", mmap_mode="r")
    valid = np.load(where / "valid.npy", mmap_mode="r")
    total = meta["bytes"]["train"] + meta["bytes"]["valid"]
    files = meta["files"]["train"] + meta["files"]["valid"]
    summary = (
        f"corpus: Python {meta['python']} standard library ({meta['root']}): {files} .py files, "
        f"{total:,} bytes (train {meta['files']['train']} files / {meta['bytes']['train']:,} "
        f"bytes, validation {meta['files']['valid']} files / {meta['bytes']['valid']:,} bytes)",
        f"corpus unigram entropy: {meta['unigram_entropy']:.4f} nats/byte (validation under the "
        f"train unigram: {meta['valid_unigram_cross_entropy']:.4f}); cache {where}",
    )
    return Splits(
        kind="tokens",
        train=TokenWindows(train, seq_len),
        valid=TokenWindows(valid, seq_len),
        image_shape=(),
        num_classes=256,
        summary=summary,
        stats={
            "corpus_bytes": float(total),
            "unigram_entropy": float(meta["unigram_entropy"]),
            "valid_unigram_cross_entropy": float(meta["valid_unigram_cross_entropy"]),
        },
    )


def _split_images(x: np.ndarray, y: np.ndarray, valid_percent: float) -> tuple[Any, Any]:
    order = np.random.default_rng(0).permutation(len(x))
    n_valid = max(1, round(len(x) * valid_percent / 100))
    valid, train = order[:n_valid], order[n_valid:]
    return {"x": x[train], "y": y[train]}, {"x": x[valid], "y": y[valid]}


def _digits(config: DataConfig) -> Splits:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise CLIError(
            "data.source digits needs scikit-learn: pip install 'titanax-cli[digits]'."
        ) from err
    digits = load_digits()
    x = (np.asarray(digits.images, np.float32) / 16.0).astype(np.float32)
    y = np.asarray(digits.target, np.int32)
    train, valid = _split_images(x, y, config.valid_percent)
    return Splits(
        kind="images",
        train=train,
        valid=valid,
        image_shape=(8, 8),
        num_classes=10,
        summary=(
            f"data: scikit-learn digits, {len(x)} images 8×8 (train {len(train['y'])}, "
            f"validation {len(valid['y'])}), 10 classes",
        ),
        stats={"samples": float(len(x))},
    )


def _read_idx(path: pathlib.Path) -> np.ndarray:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise CLIError(f"data.source mnist_idx: {path} is not an unsigned-byte IDX file.")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise CLIError(
            f"data.source mnist_idx: {path} declares shape {dims} but holds {body.size} values."
        )
    return body.reshape(dims)


_MNIST_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _locate(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
    for name in (
        stem,
        stem.replace("-idx", ".idx"),
        f"{stem}.gz",
        f"{stem.replace('-idx', '.idx')}.gz",
    ):
        if (directory / name).is_file():
            return directory / name
    return None


def _missing_message(directory: pathlib.Path, stems: list[str]) -> str:
    return (
        f"data.source mnist_idx: {directory} has no {', '.join(stems)} (nor their .gz); it needs "
        "the four standard files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte."
    )


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path:
    found = _locate(directory, stem)
    if found is None:
        raise CLIError(_missing_message(directory, [stem]))
    return found


def mnist_problem(path: str) -> str | None:
    """What is wrong with ``data.path`` of the ``mnist_idx`` source (``None``: nothing).

    Checks that the directory exists and holds the four MNIST IDX files (plain or ``.gz``)
    without reading them; relative paths are relative to the working directory, as in ``run``.
    """
    directory = pathlib.Path(os.path.expanduser(path))
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a directory"
        return (
            f"{str(directory)!r} {what}; source mnist_idx reads the MNIST IDX files from this "
            "directory (relative paths are relative to the working directory)."
        )
    missing = [stem for stem in _MNIST_STEMS if _locate(directory, stem) is None]
    return _missing_message(directory, missing) if missing else None


def _mnist(config: DataConfig) -> Splits:
    directory = pathlib.Path(os.path.expanduser(str(config.path)))
    if not directory.is_dir():
        raise CLIError(f"data.path {str(directory)!r} (mnist_idx) is not a directory.")
    arrays = {}
    for split, prefix in (("train", "train"), ("valid", "t10k")):
        images = _read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
        arrays[split] = {
            "x": (images.astype(np.float32) / 255.0),
            "y": labels.astype(np.int32),
        }
    h, w = arrays["train"]["x"].shape[1:]
    return Splits(
        kind="images",
        train=arrays["train"],
        valid=arrays["valid"],
        image_shape=(int(h), int(w)),
        num_classes=10,
        summary=(
            f"data: MNIST IDX from {directory}: train {len(arrays['train']['y'])}, validation "
            f"{len(arrays['valid']['y'])} images {h}×{w}",
        ),
        stats={"samples": float(len(arrays["train"]["y"]))},
    )


def _synthetic(config: DataConfig, model: ModelConfig) -> Splits:
    rng = np.random.default_rng(1234)
    tokens_of = token_geometry(model)
    if tokens_of is not None:
        from titanax.io import TokenWindows

        vocab, seq_len = tokens_of
        # A first-order Markov chain with four likely successors per token: learnable quickly.
        successors = rng.integers(0, vocab, size=(vocab, 4))
        n = config.num_samples * seq_len + 1
        windows = max(1, round(config.num_samples * config.valid_percent / 100))
        n_valid = windows * seq_len + 1
        tokens = np.empty(n + n_valid, np.uint16)
        tokens[0] = 0
        picks = rng.integers(0, 4, size=tokens.size)
        for i in range(1, tokens.size):
            tokens[i] = successors[tokens[i - 1], picks[i]]
        return Splits(
            kind="tokens",
            train=TokenWindows(tokens[:n], seq_len),
            valid=TokenWindows(tokens[n:], seq_len),
            image_shape=(),
            num_classes=vocab,
            summary=(f"data: synthetic Markov tokens, {n:,} train / {n_valid:,} validation",),
            stats={"corpus_bytes": float(n + n_valid)},
        )
    x = rng.normal(size=(config.num_samples, 8, 8)).astype(np.float32)
    teacher = rng.normal(size=(64, 10)).astype(np.float32)
    y = np.argmax(x.reshape(len(x), 64) @ teacher, axis=1).astype(np.int32)
    train, valid = _split_images(x, y, config.valid_percent)
    return Splits(
        kind="images",
        train=train,
        valid=valid,
        image_shape=(8, 8),
        num_classes=10,
        summary=(
            f"data: synthetic 8×8 images with linear-teacher labels, train {len(train['y'])}, "
            f"validation {len(valid['y'])}",
        ),
        stats={"samples": float(len(x))},
    )


def load_splits(config: DataConfig, model: ModelConfig, *, run_dir: pathlib.Path) -> Splits:
    """Builds (or reads from the cache) the train and validation splits of ``config.source``.

    Args:
      config: the ``data`` section.
      model: the ``model`` section (sequence length and vocabulary of token sources).
      run_dir: the run directory; the stdlib cache defaults to ``<run_dir>/data``.

    Returns:
      The :class:`Splits`.

    Raises:
      CLIError: missing files, an empty split, or a missing optional dependency.
    """
    if config.source == "stdlib_bytes":
        tokens_of = token_geometry(model)
        if tokens_of is None:
            raise CLIError(
                "data.source stdlib_bytes needs a token model (kind gpt, or flax_nnx with task lm)."
            )
        cache = (
            pathlib.Path(config.cache_dir).expanduser() if config.cache_dir else run_dir / "data"
        )
        return _stdlib(config, tokens_of[1], cache)
    if config.source == "digits":
        return _digits(config)
    if config.source == "mnist_idx":
        return _mnist(config)
    return _synthetic(config, model)
