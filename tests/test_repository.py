"""Repository-level checks: README's commands, CI entry point, and the example they run."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    commands = _readme_commands()
    assert len(commands) == 2, commands
    main_job, test_command = commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines(), "'.ci/run' must run README's test command verbatim"
    assert "|| true" not in ci
    assert "set -euo pipefail" in ci
    assert "uv run" in main_job


def test_example_trains_and_matches_one_device() -> None:
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="8", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "data_parallel_regression.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    match = re.search(r"largest relative loss difference over 200 steps: (\S+)", result.stdout)
    assert match is not None, result.stdout[-2000:]
    assert float(match.group(1)) < 1e-4
