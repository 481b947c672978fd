"""DPF's pieces (Lin et al. 2020 as ZIB-IOL/BIMP runs it), on a 3-weight linear layer
(issue 17)."""

import pytest
import torch
from torch.func import functional_call

from sparseavg.pruning.dpf import (
    DPF_RECOMPUTE_EVERY,
    dpf_mask,
    dpf_recomputes,
    feedback_weights,
    masked_weights,
)
from sparseavg.pruning.gmp_reference import bimp_gmp_schedule, required_sparsity
from sparseavg.pruning.mask import Mask, MaskError

X = torch.tensor([[1.0, 2.0, 3.0]])
MASK = Mask({"weight": torch.tensor([[True, False, True]])})


def _model():
    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    return model


def test_forward_and_backward_at_the_masked_point_step_on_the_dense_weights():
    model = _model()
    with masked_weights(model, MASK):
        assert model.weight.tolist() == [[1.0, 0.0, 3.0]]
        out = model(X)  # 1*1 + 0*2 + 3*3 = 10 (dense: 14)
        assert out.item() == 10.0
        (out.pow(2) / 2).sum().backward()
    assert model.weight.tolist() == [[1.0, 2.0, 3.0]]  # dense values back
    # dL/dw at the masked point: out * x = 10 * (1, 2, 3), the pruned coordinate included
    assert model.weight.grad.tolist() == [[10.0, 20.0, 30.0]]
    with torch.no_grad():
        model.weight.sub_(0.01 * model.weight.grad)  # plain SGD, lr 0.01
    # the pruned weight's dense value moved 2 -> 1.8 under its gradient (error feedback)
    assert torch.equal(model.weight, torch.tensor([[0.9, 1.8, 2.7]]))
    # the model reported and exported is the masked one
    assert torch.equal(MASK.applied(model.state_dict())["weight"], torch.tensor([[0.9, 0, 2.7]]))


def test_masked_weights_restores_on_an_exception_and_checks_the_mask():
    model = _model()
    with pytest.raises(RuntimeError, match="boom"), masked_weights(model, MASK):
        raise RuntimeError("boom")
    assert model.weight.tolist() == [[1.0, 2.0, 3.0]]
    with pytest.raises(MaskError), masked_weights(model, Mask({"bias": torch.ones(1) > 0})):
        pass


def test_functional_call_gives_the_same_value_and_gradient():
    model = _model()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    weights = feedback_weights(params, MASK)
    assert weights["weight"].tolist() == [[1.0, 0.0, 3.0]]
    out = functional_call(model, weights, (X,))
    assert out.item() == 10.0
    (grad,) = torch.autograd.grad((out.pow(2) / 2).sum(), [params["weight"]])
    assert grad.tolist() == [[10.0, 20.0, 30.0]]
    # an ordinary masked product would have cut the pruned coordinate's gradient
    masked = {"weight": params["weight"] * MASK["weight"]}
    (cut,) = torch.autograd.grad(
        (functional_call(model, masked, (X,)).pow(2) / 2).sum(), [params["weight"]]
    )
    assert cut.tolist() == [[10.0, 0.0, 30.0]]


def test_mask_recomputed_from_dense_weights_revives_a_weight():
    dense = {"w": torch.tensor([0.5, -3.0, 0.1, 2.0])}
    old = Mask({"w": torch.tensor([True, False, True, True])})  # -3 pruned earlier
    new = dpf_mask(dense, 0.5)
    assert new["w"].tolist() == [False, True, False, True]  # -3 is back
    assert not old["w"][1] and new["w"][1]


def test_when_the_reference_recomputes():
    assert DPF_RECOMPUTE_EVERY == 16
    assert [i for i in range(1, 50) if dpf_recomputes(i)] == [16, 32, 48]
    # the sparsity it recomputes at: GMP's, 0 until the first pruning epoch
    s = bimp_gmp_schedule(10, 2, 0.9)
    assert [required_sparsity(e, s) for e in (1, 2, 9)] == [0.0, s[0][1], 0.9]
    assert dpf_mask({"w": torch.tensor([0.5, -3.0])}, 0.0)["w"].tolist() == [True, True]
