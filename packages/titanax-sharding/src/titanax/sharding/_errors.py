"""The errors of ``titanax.sharding``.

Every error derives from :class:`titanax.mesh.TitanaxError` and the built-in exception a caller
would naturally catch, so ``except ValueError`` keeps working while ``except TitanaxError``
catches all of Titanax's errors.
"""

from __future__ import annotations

from titanax.mesh import TitanaxError

__all__ = ["ShardingError"]


class ShardingError(TitanaxError, ValueError):
    """A sharding rule, spec tree or plan does not fit the parameters, the batch or the mesh.

    Raised before anything compiles for: a spec longer than the leaf's rank; a mesh axis that is
    not in the mesh; a mesh axis used twice in one spec; a dim whose size does not divide by the
    product of the sizes of the axes that shard it; two equally specific rules that disagree; a
    spec tree whose structure differs from the tree; a plan whose roles share an axis or do not fit
    the mesh; a batch whose leading dim does not divide over the data axes. Each message names the
    API, the parameter path, its shape, the dim, the mesh axis and its size, the rule pattern that
    produced the spec, and the fix. When several problems are found at once (``Plan.validate``,
    ``build_param_specs``) one error lists them all, one per line.
    """
