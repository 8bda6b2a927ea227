"""Runs every benchmark, each in its own process, and writes one markdown summary.

Each benchmark script prints its table and writes ``benchmarks/results/<name>.json``; this
runner starts them one after the other (a fresh process per comparison, so nothing one of them
compiled or cached helps another), stops any that exceeds its time limit, and collects the
printed tables into ``benchmarks/results/SUMMARY.md``. ``nox -s bench`` calls it.

Run: ``python benchmarks/run_all.py [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).parent
RESULTS = HERE / "results"

# name -> (arguments sized for a 2-core CPU machine, time limit in seconds)
BENCHMARKS: dict[str, tuple[list[str], int]] = {
    "import_time": (["--repeats", "15"], 150),
    "engine_overhead": (["--steps", "10", "--rounds", "3"], 240),
    "communication": ([], 150),
    "memory": ([], 120),
    "pipeline": ([], 180),
    "checkpoint": (["--repeats", "5"], 150),
    "throughput": (["--steps", "5"], 120),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names to run")
    args = parser.parse_args()
    names = [n for n in BENCHMARKS if args.only is None or n in args.only]
    RESULTS.mkdir(parents=True, exist_ok=True)
    sections = []
    failures = []
    for name in names:
        script = HERE / f"{name}.py"
        if not script.exists():
            failures.append(f"{name}: {script} does not exist")
            continue
        extra, limit = BENCHMARKS[name]
        start = time.perf_counter()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            proc = subprocess.run(
                [sys.executable, str(script), *extra],
                capture_output=True,
                text=True,
                timeout=limit,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            failures.append(f"{name}: exceeded {limit} s")
            continue
        seconds = time.perf_counter() - start
        print(proc.stdout, flush=True)
        if proc.returncode != 0:
            failures.append(f"{name}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
            continue
        table = "\n".join(line for line in proc.stdout.splitlines() if not line.startswith("wrote"))
        sections.append(f"## {name} ({seconds:.0f} s)\n\n{table.strip()}\n")
    header = (
        f"# Titanax benchmarks\n\n{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.node()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}. "
        "Each section is one process; JSON next to this file.\n"
    )
    summary = RESULTS / "SUMMARY.md"
    summary.write_text("\n".join([header, *sections]))
    print(f"wrote {summary}")
    if failures:
        print("FAILED:\n" + "\n".join(failures), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
