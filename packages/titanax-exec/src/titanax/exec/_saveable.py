"""The TrainState as a checkpointable tree of nested dicts, and fingerprints for metadata.

Checkpoints store the state's arrays as nested dicts keyed by path components
(``{"params": {"blocks": {"0": ...}}, "opt_state": {"0": {"mu": ...}}, "step": ...}``) so any
storage backend sees plain dicts whatever the optimizer's NamedTuples are, and so tools can print
the paths. Restoring maps the dict back onto the structure of an abstract state built for the
current mesh and plan.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax

from titanax.exec._errors import StateError
from titanax.exec._state import TrainState

__all__ = ["from_saveable", "optimizer_fingerprint", "to_saveable"]

_FIELDS = ("params", "opt_state", "step", "rngs", "loss_scale", "skipped")


def _key(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _nested(tree: Any) -> Any:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    if len(leaves) == 1 and not leaves[0][0]:
        return leaves[0][1]
    out: dict[str, Any] = {}
    for path, leaf in leaves:
        node = out
        keys = [_key(p) for p in path]
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = leaf
    return out


def to_saveable(state: TrainState) -> dict[str, Any]:
    """The state's arrays as nested dicts of str keys (static fields dropped)."""
    return {field: _nested(getattr(state, field)) for field in _FIELDS}


def from_saveable(abstract: TrainState, tree: dict[str, Any]) -> TrainState:
    """Rebuilds a TrainState with ``abstract``'s structure and static fields from ``tree``.

    Raises:
      StateError: a path of the abstract state is missing from ``tree``.
    """
    values = {}
    for field in _FIELDS:
        template = getattr(abstract, field)
        paths, treedef = jax.tree_util.tree_flatten_with_path(template)
        leaves = []
        for path, _ in paths:
            node = tree.get(field)
            for k in (_key(p) for p in path):
                if not isinstance(node, dict) or k not in node:
                    where = "/".join([field, *(_key(p) for p in path)])
                    raise StateError(f"restore: the checkpoint has no value for {where!r}.")
                node = node[k]
            leaves.append(node)
        values[field] = jax.tree.unflatten(treedef, leaves)
    return abstract.replace(**values)


def optimizer_fingerprint(state: TrainState) -> str:
    """sha256 of the optimizer's state structure, independent of the model.

    The optimizer is initialized on a canonical one-leaf parameter tree and the resulting state's
    structure, shapes and dtypes are hashed: it changes when the optimizer changes (adam -> sgd,
    a chain added) and not when the model changes (that is the restore's tree check) or when a
    hyper-parameter value changes (resuming with another learning rate is fine). Optimizers whose
    state depends on the parameter tree (e.g. ``optax.multi_transform`` with labels) are
    fingerprinted on their real state instead.
    """
    try:
        canonical = jax.eval_shape(
            state.tx.init, {"w": jax.ShapeDtypeStruct((2,), jax.numpy.float32)}
        )
    except Exception:  # the optimizer's init needs the real parameter tree
        canonical = state.opt_state
    leaves, treedef = jax.tree.flatten(canonical)
    record = {
        "structure": str(treedef),
        "leaves": [[list(x.shape), str(x.dtype)] for x in leaves],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
