"""Import cost of ``titanax.mesh`` relative to ``import jax`` (goal: ratio <= 1.15).

Each import runs in a fresh interpreter, alternating the two, ``--repeats`` times; the medians
are compared. Prints a table and writes ``benchmarks/results/import_time.json``.

Run: ``python benchmarks/import_time.py [--repeats 15] [--modules titanax.mesh ...]``
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

RESULTS = pathlib.Path(__file__).parent / "results"


def _time_import(module: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--modules", nargs="+", default=["titanax.mesh"])
    args = parser.parse_args()
    samples: dict[str, list[float]] = {"jax": [], **{m: [] for m in args.modules}}
    for module in samples:
        _time_import(module)  # warm the file cache (and write any missing bytecode)
    for _ in range(args.repeats):
        for module in samples:
            samples[module].append(_time_import(module))
    base = statistics.median(samples["jax"])
    rows = []
    print("| module | median import (s) | ÷ import jax | goal |\n|---|---|---|---|")
    for module, times in samples.items():
        median = statistics.median(times)
        ratio = median / base
        rows.append({"module": module, "median_s": median, "ratio_to_jax": ratio})
        print(
            f"| {module} | {median:.3f} | {ratio:.3f} | {'-' if module == 'jax' else '<= 1.15'} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "import_time.json"
    out.write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
