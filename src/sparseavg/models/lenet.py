"""LeNet-300-100, the fully connected MNIST network of the lottery-ticket paper."""

from __future__ import annotations

import math

from sparseavg.models._common import check_num_classes, check_shape
from sparseavg.models.mlp import MLP

__all__ = ["LENET300_100_HIDDEN", "build_lenet300_100"]

LENET300_100_HIDDEN: tuple[int, int] = (300, 100)


def build_lenet300_100(num_classes: int, input_shape: tuple[int, ...]) -> MLP:
    """Build ``lenet300_100``: Flatten → prod(input_shape)-300-100-num_classes with ReLU.

    Any ``input_shape`` is accepted (flattened); for MNIST ``(1, 28, 28)`` and 10 classes
    the network has 266,610 parameters.
    """
    shape = check_shape(input_shape)
    return MLP(math.prod(shape), LENET300_100_HIDDEN, check_num_classes(num_classes))
