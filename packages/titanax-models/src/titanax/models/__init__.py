"""titanax.models: reference models in plain single-device JAX (GPT, MLP, CNN) and losses."""

from titanax.models._cnn import CNNConfig as CNNConfig
from titanax.models._cnn import cnn_apply as cnn_apply
from titanax.models._cnn import cnn_init as cnn_init
from titanax.models._errors import ModelError as ModelError
from titanax.models._gpt import gpt_apply as gpt_apply
from titanax.models._gpt import gpt_block as gpt_block
from titanax.models._gpt import gpt_blocks as gpt_blocks
from titanax.models._gpt import gpt_embed as gpt_embed
from titanax.models._gpt import gpt_head as gpt_head
from titanax.models._gpt_config import GPTConfig as GPTConfig
from titanax.models._gpt_config import gpt_flops_per_token as gpt_flops_per_token
from titanax.models._gpt_config import gpt_param_count as gpt_param_count
from titanax.models._gpt_params import gpt_init as gpt_init
from titanax.models._gpt_params import is_stacked as is_stacked
from titanax.models._gpt_params import stack_blocks as stack_blocks
from titanax.models._gpt_params import unstack_blocks as unstack_blocks
from titanax.models._losses import cross_entropy as cross_entropy
from titanax.models._losses import gpt_loss as gpt_loss
from titanax.models._losses import softmax_cross_entropy_int as softmax_cross_entropy_int
from titanax.models._mlp import MLPConfig as MLPConfig
from titanax.models._mlp import mlp_apply as mlp_apply
from titanax.models._mlp import mlp_init as mlp_init
from titanax.models._version import __version__ as __version__

__all__ = [
    "CNNConfig",
    "GPTConfig",
    "MLPConfig",
    "ModelError",
    "__version__",
    "cnn_apply",
    "cnn_init",
    "cross_entropy",
    "gpt_apply",
    "gpt_block",
    "gpt_blocks",
    "gpt_embed",
    "gpt_flops_per_token",
    "gpt_head",
    "gpt_init",
    "gpt_loss",
    "gpt_param_count",
    "is_stacked",
    "mlp_apply",
    "mlp_init",
    "softmax_cross_entropy_int",
    "stack_blocks",
    "unstack_blocks",
]
