"""Shared fixtures: a small GPT-style parameter tree following CONTRACTS A naming."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

Tree = dict[str, Any]


def gpt_tree(
    *,
    d: int = 16,
    ff: int = 64,
    vocab: int = 64,
    seq: int = 8,
    layers: int = 2,
    stacked: bool = False,
    seed: int = 0,
) -> Tree:
    """GPT parameters named as ``titanax.models.gpt`` names them (layer list or stacked)."""
    rng = np.random.default_rng(seed)

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    def block(lead: tuple[int, ...]) -> Tree:
        return {
            "ln1": {"scale": arr(*lead, d), "bias": arr(*lead, d)},
            "attn": {
                name: {"kernel": arr(*lead, d, d), "bias": arr(*lead, d)}
                for name in ("q", "k", "v", "out")
            },
            "ln2": {"scale": arr(*lead, d), "bias": arr(*lead, d)},
            "mlp": {
                "up": {"kernel": arr(*lead, d, ff), "bias": arr(*lead, ff)},
                "down": {"kernel": arr(*lead, ff, d), "bias": arr(*lead, d)},
            },
        }

    blocks: Any = block((layers,)) if stacked else [block(()) for _ in range(layers)]
    return {
        "embed": {"embedding": arr(vocab, d)},
        "pos_embed": {"embedding": arr(seq, d)},
        "blocks": blocks,
        "ln_f": {"scale": arr(d), "bias": arr(d)},
        "head": {"kernel": arr(d, vocab)},
    }


@pytest.fixture(scope="session")
def make_gpt() -> Callable[..., Tree]:
    """Factory ``make_gpt(d=16, ff=64, vocab=64, seq=8, layers=2, stacked=False)``."""
    return gpt_tree
