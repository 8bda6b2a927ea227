"""The pytest plugin's devices and fixtures, and the subprocess helper."""

from __future__ import annotations

from collections.abc import Callable

import jax
import pytest

from titanax.testing import free_port, run_with_devices, use_cpu_devices


def test_plugin_gives_eight_devices(cpu_devices: list[jax.Device]) -> None:
    assert len(cpu_devices) == 8
    use_cpu_devices(8)  # same count after start-up: no error
    with pytest.raises(RuntimeError, match=r"already started with 8 CPU devices"):
        use_cpu_devices(4)


def test_make_mesh(make_mesh: Callable[..., jax.sharding.Mesh]) -> None:
    mesh = make_mesh(("data", "tensor"), (-1, 2))
    assert dict(mesh.shape) == {"data": 4, "tensor": 2}


@pytest.mark.devices(64)
def test_devices_marker_skips() -> None:
    raise AssertionError("must be skipped: 64 devices are not available")


def test_run_with_devices() -> None:
    out = run_with_devices("import jax; print(jax.device_count())", num_devices=3)
    assert out.stdout.strip() == "3"
    with pytest.raises(AssertionError, match=r"exited 3\n--- stdout ---\nbye"):
        run_with_devices("import sys; print('bye'); sys.exit(3)", num_devices=1)


def test_free_port() -> None:
    assert 0 < free_port() < 65536
