"""tree_paths / path_str over every kind of pytree the issue names."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from titanax.sharding import Rules, build_param_specs, path_str, tp_rules, tree_paths


class Moments(NamedTuple):
    mu: Any
    nu: Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class State:
    params: Any
    step: Any


class Opaque:
    """Registered without keys: its children get FlattenedIndexKey."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b


jax.tree_util.register_pytree_node(
    Opaque, lambda o: ((o.a, o.b), None), lambda _, children: Opaque(*children)
)


def test_dicts_lists_tuples() -> None:
    tree = {"blocks": [{"attn": {"qkv": {"kernel": 1.0}}}] * 4, "head": (2.0, 3.0)}
    paths = tree_paths(tree)
    assert paths[3] == "blocks/3/attn/qkv/kernel"
    assert paths[-2:] == ["head/0", "head/1"]
    assert len(paths) == len(jax.tree.leaves(tree))


def test_namedtuple_and_dataclass_use_field_names() -> None:
    tree = State(params={"w": np.zeros(2)}, step=Moments(mu=1.0, nu=[2.0]))
    assert tree_paths(tree) == ["params/w", "step/mu", "step/nu/0"]


def test_flattened_index_key_has_no_brackets() -> None:
    pairs, _ = jax.tree_util.tree_flatten_with_path(Opaque(1.0, 2.0))
    assert [path_str(kp) for kp, _ in pairs] == ["0", "1"]
    assert tree_paths({"o": Opaque(1.0, {"x": 2.0})}) == ["o/0", "o/1/x"]


def test_path_str_renders_every_key_type() -> None:
    key_path = (
        jax.tree_util.DictKey("blocks"),
        jax.tree_util.SequenceKey(3),
        jax.tree_util.GetAttrKey("attn"),
        jax.tree_util.FlattenedIndexKey(1),
    )
    assert path_str(key_path) == "blocks/3/attn/1"
    assert path_str(()) == ""


def test_leaf_order_matches_tree_leaves() -> None:
    tree = {"b": [np.zeros(1), np.ones(2)], "a": {"z": np.zeros(3), "y": np.zeros(4)}}
    paths = tree_paths(tree)
    sizes = [leaf.size for leaf in jax.tree.leaves(tree)]
    assert paths == ["a/y", "a/z", "b/0", "b/1"]
    assert sizes == [4, 3, 1, 2]


def test_flax_nnx_state_paths_drop_the_variable_value() -> None:
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.attn = nnx.MultiHeadAttention(
                num_heads=4, in_features=8, qkv_features=8, decode=False, rngs=rngs
            )
            self.layers = nnx.List([nnx.Linear(8, 8, rngs=rngs) for _ in range(2)])

    # eval_shape: the same State of ShapeDtypeStructs, without running the initializers.
    _, state = nnx.split(nnx.eval_shape(lambda: Block(nnx.Rngs(0))))
    paths = tree_paths(state)
    assert "attn/query/kernel" in paths
    assert "layers/1/kernel" in paths
    assert not any(p.endswith("/value") for p in paths)
    specs = build_param_specs(state, tp_rules.flax_nnx())
    # The spec tree keeps the State structure (Variables wrapping specs).
    assert jax.tree.structure(specs) == jax.tree.structure(state)
    by_path = dict(zip(tree_paths(state), jax.tree.leaves(specs), strict=True))
    assert by_path["attn/query/kernel"] == jax.P(None, "tensor", None)
    assert by_path["attn/out/kernel"] == jax.P("tensor", None, None)


def test_linen_params_dict_paths_and_rules_under_the_prefix() -> None:
    import flax.linen as nn

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            return nn.Dense(4, name="head")(nn.Dense(8)(x))

    variables = jax.eval_shape(Model().init, jax.random.key(0), np.zeros((1, 4), np.float32))
    paths = tree_paths(variables)
    assert paths == [
        "params/Dense_0/bias",
        "params/Dense_0/kernel",
        "params/head/bias",
        "params/head/kernel",
    ]
    specs = build_param_specs(variables, Rules({"head/kernel": jax.P(None, "tensor")}))
    assert specs["params"]["head"]["kernel"] == jax.P(None, "tensor")
    assert specs["params"]["Dense_0"]["kernel"] == jax.P()
