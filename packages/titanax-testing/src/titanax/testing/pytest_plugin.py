"""pytest plugin (entry point ``titanax``): simulated CPU devices and mesh fixtures.

Loaded automatically when ``titanax-testing`` is installed. Before any test module imports JAX
it sets the CPU device count (``--cpu-devices``, default 8, or ``TITANAX_TEST_CPU_DEVICES``) and
XLA's backend optimization level (``TITANAX_TEST_XLA_OPT_LEVEL``, default 0: compiles in about
half the time on CPU; tests compare layouts with each other under the same level, and
benchmarks run at XLA's default). Subprocesses started by tests inherit both.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import jax
import pytest

from titanax.mesh import MeshSpec
from titanax.testing._devices import use_cpu_devices

__all__ = ["cpu_devices", "make_mesh"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("titanax")
    group.addoption(
        "--cpu-devices",
        type=int,
        default=int(os.environ.get("TITANAX_TEST_CPU_DEVICES", "8")),
        help="simulated JAX CPU devices for the test process (default 8)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "devices(n): needs at least n devices; skipped otherwise")
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in flags:
        level = os.environ.get("TITANAX_TEST_XLA_OPT_LEVEL", "0")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level={level}".strip()
    count = int(config.getoption("--cpu-devices"))
    os.environ.setdefault("JAX_NUM_CPU_DEVICES", str(count))
    use_cpu_devices(count)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers(name="devices"):
        need = int(marker.args[0])
        if jax.device_count() < need:
            pytest.skip(f"needs {need} devices, have {jax.device_count()}")


@pytest.fixture(scope="session")
def cpu_devices() -> list[jax.Device]:
    """The simulated devices of this test process (8 unless ``--cpu-devices`` says otherwise)."""
    return list(jax.devices())


@pytest.fixture(scope="session")
def make_mesh() -> Callable[..., jax.sharding.Mesh]:
    """Factory ``make_mesh(axes, shape, axis_types="auto")`` -> ``jax.sharding.Mesh``.

    Builds through :class:`titanax.mesh.MeshSpec`, so shapes may contain one ``-1``.
    """

    def build(
        axes: Sequence[str], shape: Sequence[int], axis_types: str = "auto"
    ) -> jax.sharding.Mesh:
        spec = MeshSpec(axes=tuple(axes), shape=tuple(shape), axis_types=axis_types)  # type: ignore[arg-type]
        return spec.build()

    return build
