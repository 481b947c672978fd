"""Model zoo: MLPs, LeNet-300-100, a 1-D conv net, CIFAR ResNets, wide ResNets, VGGs and
torchvision's ImageNet ResNets, built by name with ``build_model``.

All models are plain ``nn.Conv*``/``nn.Linear``/``nn.BatchNorm*`` stacks (prunable by
multiplying weights with masks, compatible with ``torch.func``), end in an ``nn.Linear``
producing logits, and are initialised from the global torch RNG. ``sparse_linear`` turns a
pruned model's sparse enough linear layers into CSR ones for inference.
"""

from sparseavg.models._common import INIT_SCHEMES, InitScheme, init_open_lth, initialise
from sparseavg.models.counting import count_parameters
from sparseavg.models.registry import available_models, build_model, register_model
from sparseavg.models.sparse_linear import SparseLinear, sparse_linear

__all__ = [
    "INIT_SCHEMES",
    "InitScheme",
    "SparseLinear",
    "available_models",
    "build_model",
    "count_parameters",
    "init_open_lth",
    "initialise",
    "register_model",
    "sparse_linear",
]
