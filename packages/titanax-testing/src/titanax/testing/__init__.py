"""titanax.testing (dev-only): pytree assertions, device fixtures, subprocess helpers."""

from titanax.testing._devices import free_port as free_port
from titanax.testing._devices import run_with_devices as run_with_devices
from titanax.testing._devices import use_cpu_devices as use_cpu_devices
from titanax.testing._trees import assert_same_structure as assert_same_structure
from titanax.testing._trees import assert_trees_allclose as assert_trees_allclose
from titanax.testing._trees import assert_trees_equal as assert_trees_equal
from titanax.testing._version import __version__ as __version__

__all__ = [
    "__version__",
    "assert_same_structure",
    "assert_trees_allclose",
    "assert_trees_equal",
    "free_port",
    "run_with_devices",
    "use_cpu_devices",
]
