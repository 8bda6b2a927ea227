"""Acceptance: the bytes per device that describe/layout predict equal the placed arrays' shards.

For DP, FSDP, TP and FSDP×TP plans of a small GPT's parameters and its Adam state, the layout's
``bytes_per_device`` (and every row's) must equal, on every device, the sum of the sizes of the
addressable shards ``jax.device_put`` made — measured, not recomputed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from titanax.sharding import DP, FSDP, TP, Plan, apply_named_sharding, tp_rules, tree_paths

PLANS = {
    "dp": ((("data",), (8,)), Plan(data_parallel=DP("data"))),
    "fsdp": ((("fsdp",), (8,)), Plan(fsdp=FSDP("fsdp", min_size_bytes=256))),
    "tp": ((("tensor",), (8,)), Plan(tensor_parallel=TP("tensor", rules=tp_rules.gpt()))),
    "fsdp_tp": (
        (("fsdp", "tensor"), (4, 2)),
        Plan(
            fsdp=FSDP("fsdp", min_size_bytes=0),
            tensor_parallel=TP("tensor", rules=tp_rules.gpt()),
        ),
    ),
}


def measured_per_device(tree: Any) -> Counter[int]:
    per_device: Counter[int] = Counter()
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            per_device[shard.device.id] += shard.data.nbytes
    return per_device


def measured_per_leaf(tree: Any) -> dict[str, set[int]]:
    return {
        path: {s.data.nbytes for s in leaf.addressable_shards}
        for path, leaf in zip(tree_paths(tree), jax.tree.leaves(tree), strict=True)
    }


@pytest.mark.parametrize("name", list(PLANS))
def test_predicted_bytes_equal_addressable_shards(name: str, make_gpt, make_mesh) -> None:  # type: ignore[no-untyped-def]
    (axes, shape), plan = PLANS[name]
    mesh = make_mesh(axes, shape)
    params = make_gpt(d=16, ff=64, vocab=64, seq=8, layers=2)
    opt = optax.adam(1e-3)
    # Host copies: placing host arrays is a plain transfer (device-to-device resharding of the
    # fresh jax.Arrays would compile one program per shape and sharding, which is slow on CPU).
    opt_state = jax.tree.map(np.asarray, opt.init(params))
    param_specs = plan.param_specs(params, mesh)
    state_specs = optax.tree_map_params(
        opt,
        lambda p, s: s,
        opt_state,
        plan.optimizer_specs(params, mesh),
        transform_non_params=lambda _: P(),
    )
    placed_params = apply_named_sharding(params, mesh, param_specs)
    placed_state = apply_named_sharding(opt_state, mesh, state_specs)

    param_layout = plan.layout(params, mesh)
    state_layout = plan.layout(opt_state, mesh, specs=state_specs)
    predicted = param_layout.bytes_per_device + state_layout.bytes_per_device

    measured = measured_per_device(placed_params) + measured_per_device(placed_state)
    assert len(measured) == 8
    assert set(measured.values()) == {predicted}
    # Row by row too: every device's shard of every leaf has the predicted size.
    for layout, placed in ((param_layout, placed_params), (state_layout, placed_state)):
        shards = measured_per_leaf(placed)
        assert {r.path: {r.bytes_per_device} for r in layout.rows} == shards
    # The plans really differ: DP replicates everything, the others shard.
    total = param_layout.total_bytes + state_layout.total_bytes
    if name == "dp":
        assert predicted == total
        assert param_layout.replicated_share == 1.0
    else:
        assert predicted < total / 2
