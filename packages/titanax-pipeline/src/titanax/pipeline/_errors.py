"""The errors of ``titanax.pipeline``."""

from __future__ import annotations

from titanax.mesh import TitanaxError

__all__ = ["PipelineError"]


class PipelineError(TitanaxError, ValueError):
    """A pipeline schedule or executor was asked for something it cannot run.

    Raised before anything compiles: an unknown schedule kind, stage / microbatch / virtual
    stage counts that the schedule cannot use (interleaved 1F1B needs ``virtual_stages >= 2``
    and ``microbatches % stages == 0``), a batch that does not split into the microbatches, a
    mesh whose pipeline axis is missing or has another size than ``stages``, stacked layer
    parameters whose leading dimension does not divide into ``stages × virtual_stages`` chunks,
    a stage function that changes the activation's shape or dtype, or a loss function that does
    not return two scalars. The message names the API, the rule, the values and the fix.
    """
