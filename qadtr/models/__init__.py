"""Model zoo: float and Brevitas QNNs by name, switchable bit widths, BN folding for deployment.

Example:
    >>> from qadtr.models import ModelConfig, create_model, running_at
    >>> model = create_model(ModelConfig("resnet20", bits=((2, 2), (4, 4), (8, 8))))
    >>> with running_at(model, 4, 4):
    ...     logits = model(x)
"""

from qadtr.models import mobilenetv2, resnet  # noqa: F401  (fill the registry)
from qadtr.models._fold import fold_bn
from qadtr.models._registry import list_models, register_model
from qadtr.models._layers import SUPPORTED_BITS, QuantSpec
from qadtr.models.switchable import (ModelConfig, QuantNet, at_bits, bits_of, create_model, deploy_net,
                                     get_bits, load_pretrained_, running_at, set_bits)

__all__ = ["ModelConfig", "QuantNet", "QuantSpec", "SUPPORTED_BITS", "at_bits", "bits_of", "create_model", "deploy_net",
           "fold_bn", "get_bits", "list_models", "load_pretrained_", "register_model", "running_at", "set_bits"]
