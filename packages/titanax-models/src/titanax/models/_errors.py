"""The errors of ``titanax.models``."""

from __future__ import annotations

from titanax.mesh import TitanaxError

__all__ = ["ModelError"]


class ModelError(TitanaxError, ValueError):
    """A reference model was configured or called with values it cannot use.

    Raised for invalid config records (``GPTConfig``, ``MLPConfig``, ``CNNConfig``: non-positive
    sizes, ``d_model`` not divisible by ``n_heads``, an unknown activation, ...), for parameter
    trees whose paths or shapes do not match the config (the message names the parameter path,
    the expected and the actual shape), and for inputs of the wrong rank, dtype or length.
    """
