"""Test settings for titanax-pipeline.

XLA's CPU backend spends most of a compile in LLVM; its -O0 halves the compile time of the
pipeline programs these tests build (about 20 of them) without changing what they compute at
HLO level. Set before JAX starts its backend; appended to any XLA_FLAGS already given.
"""

from __future__ import annotations

import os

_FLAG = "--xla_backend_optimization_level=0"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
