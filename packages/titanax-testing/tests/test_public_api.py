from __future__ import annotations

import titanax.testing


def test_all_is_pinned() -> None:
    assert sorted(titanax.testing.__all__) == [
        "__version__",
        "assert_same_structure",
        "assert_trees_allclose",
        "assert_trees_equal",
        "free_port",
        "run_with_devices",
        "use_cpu_devices",
    ]
