"""The main job's corpus for the example scripts: this Python's standard library sources as bytes.

The same split as ``titanax run``'s ``stdlib_bytes`` source: every ``.py`` file under
``sysconfig.get_paths()["stdlib"]`` (without ``site-packages``), sorted by path; a file is held
out for validation when CRC-32 of its relative path mod 10,000 is below ``100 × valid_percent``.
Scripts import it with ``sys.path.insert(0, <examples dir>)``.
"""

from __future__ import annotations

import pathlib
import sysconfig
import zlib

import numpy as np

__all__ = ["stdlib_corpus", "unigram_entropy"]


def stdlib_corpus(
    max_bytes: int | None = None, *, valid_percent: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, valid)`` uint8 token arrays (vocabulary 256).

    Args:
      max_bytes: read only the first files (sorted) up to about this many bytes.
      valid_percent: share of the files held out, by the hash of their path.
    """
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*.py") if not skip & set(p.parts)
    )
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    total = 0
    for rel in files:
        if max_bytes is not None and total >= max_bytes:
            break
        data = (root / rel).read_bytes()
        parts[zlib.crc32(rel.encode()) % 10_000 < round(valid_percent * 100)].append(data)
        total += len(data)
    if not parts[True] and len(parts[False]) > 1:  # a small max_bytes: hold out the last file
        parts[True].append(parts[False].pop())
    train, valid = (
        np.frombuffer(b"".join(parts[held_out]), np.uint8) for held_out in (False, True)
    )
    return train, valid


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy of the byte distribution, nats per byte (a model must get below it)."""
    p = np.bincount(tokens, minlength=256) / len(tokens)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())
