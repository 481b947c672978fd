"""``sparseavg.sparse_linear``: CSR weights for inference, converted only where sparse enough,
with the dense model's outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparseavg
from sparseavg import Mask, build_model, magnitude_prune, prunable_parameters
from sparseavg.models.sparse_linear import SparseLinear, sparse_linear


def pruned_lenet(sparsity: float) -> nn.Module:
    """LeNet-300-100 for MNIST with ``sparsity`` of each layer pruned by magnitude."""
    torch.manual_seed(0)
    model = build_model("lenet300_100", 10, (1, 28, 28))
    params = prunable_parameters(model)
    mask = magnitude_prune(params, Mask.ones_like(params), sparsity, scope="layerwise")
    mask.apply_(model)
    return model


def test_a_95_percent_sparse_lenet_gives_the_dense_logits():
    model = pruned_lenet(0.95)
    sparse = sparseavg.sparse_linear(model)
    kinds = [type(m).__name__ for m in sparse.modules() if isinstance(m, (nn.Linear, SparseLinear))]
    assert kinds == ["SparseLinear"] * 3
    assert sparse.layers[1].weight.layout == torch.sparse_csr
    assert sparse.layers[1].weight._nnz() == 11_760  # 5 % of 300 x 784
    x = torch.randn(128, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense, out = model.eval()(x), sparse(x)
    assert out.shape == (128, 10)
    torch.testing.assert_close(out, dense, rtol=0, atol=1e-5)
    assert isinstance(model.layers[1], nn.Linear)  # the model itself is left as it was


def test_only_layers_at_least_min_sparsity_sparse_are_converted():
    model = pruned_lenet(0.9)
    with torch.no_grad():
        model.layers[5].weight.zero_()  # the classifier: 100 % sparse, so converted
    sparse = sparse_linear(model, min_sparsity=0.95)
    assert [type(sparse.layers[i]).__name__ for i in (1, 3, 5)] == [
        "Linear",
        "Linear",
        "SparseLinear",
    ]
    assert "sparsity=1.0000" in repr(sparse.layers[5])
    all_sparse = sparse_linear(model, min_sparsity=0.9)
    assert all(isinstance(all_sparse.layers[i], SparseLinear) for i in (1, 3, 5))


def test_a_bare_layer_without_bias_and_inputs_of_more_dimensions():
    torch.manual_seed(0)
    layer = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(32, 64) > 0.97)
    sparse = sparse_linear(layer)
    assert isinstance(sparse, SparseLinear) and sparse.bias is None
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), layer(x), rtol=0, atol=1e-5)
    assert sparse(x).shape == (3, 5, 32)


def test_half_precision_layers_and_bad_thresholds_are_left_or_refused():
    layer = nn.Linear(8, 8).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.zero_()
    assert isinstance(sparse_linear(layer), nn.Linear)
    with pytest.raises(ValueError, match="min_sparsity: a share in"):
        sparse_linear(layer, min_sparsity=95)
