import pytest
import torch
from torch import nn

from helpers import tiny_net, tiny_split
from sparseavg.averaging import (
    ensemble_probabilities,
    evaluate_ensemble,
    greedy_soup,
    recalibrate_bn,
    uniform_average,
)
from sparseavg.data import Augmentation
from sparseavg.pruning import Mask, magnitude_prune, prunable_parameters
from sparseavg.training import TrainSettings, evaluate, train


def test_average_of_identical_states_is_that_state_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(100, generator=g) * 1e3 + 0.1, "n": torch.tensor(5)}
    for k in (2, 3, 5, 7):
        avg = uniform_average([state] * k)
        assert torch.equal(avg["w"], state["w"]) and torch.equal(avg["n"], state["n"])


def test_average_of_masked_states_keeps_exact_zeros():
    model = tiny_net()
    params = prunable_parameters(model)
    mask = magnitude_prune(params, Mask.ones_like(params), 0.6)
    states = []
    for seed in range(4):
        m = tiny_net(seed)
        mask.apply_(m)
        states.append({k: v.clone() for k, v in m.state_dict().items()})
    avg = uniform_average(states, mask=mask)
    for name in mask:
        assert torch.equal(avg[name][~mask[name]], torch.zeros_like(avg[name][~mask[name]]))
    # states that break the mask: their average is multiplied by it, pruned entries exactly 0
    dense = [tiny_net(seed).state_dict() for seed in range(4)]
    forced, plain = uniform_average(dense, mask=mask), uniform_average(dense)
    for name in mask:
        assert torch.equal(forced[name], plain[name] * mask[name])
        assert int((forced[name] == 0).sum()) == int((~mask[name]).sum())
    expected = torch.stack([s["fc.weight"] for s in states]).mean(0)
    assert torch.allclose(avg["fc.weight"], expected, atol=1e-7)
    weighted = uniform_average(states[:2], weights=[3.0, 1.0])
    assert torch.allclose(
        weighted["fc.bias"], 0.75 * states[0]["fc.bias"] + 0.25 * states[1]["fc.bias"]
    )


def test_average_refuses_mismatched_states():
    with pytest.raises(ValueError, match="shape"):
        uniform_average([{"w": torch.ones(2)}, {"w": torch.ones(3)}])
    with pytest.raises(ValueError, match="different entries"):
        uniform_average([{"w": torch.ones(2)}, {"v": torch.ones(2)}])
    with pytest.raises(ValueError, match="empty"):
        uniform_average([])
    # the same entries in another order (as read back from a file) are fine
    a = {"w": torch.ones(2), "v": torch.zeros(2)}
    b = {"v": torch.ones(2), "w": torch.ones(2)}
    assert torch.equal(uniform_average([a, b])["v"], torch.full((2,), 0.5))


def test_recalibrated_bn_equals_the_statistics_computed_directly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2))
    model[0].running_mean.fill_(5.0)
    from sparseavg.data import Split

    x = torch.randn(256, 3) * torch.tensor([1.0, 2.0, 3.0]) + torch.tensor([1.0, -1.0, 0.5])
    data = Split(x, torch.zeros(256, dtype=torch.long))
    recalibrate_bn(model, data, batch_size=64)
    chunks = x.split(64)
    mean = torch.stack([c.mean(0) for c in chunks]).mean(0)
    var = torch.stack([c.var(0, unbiased=True) for c in chunks]).mean(0)
    assert torch.allclose(model[0].running_mean, mean, atol=1e-6)
    assert torch.allclose(model[0].running_var, var, atol=1e-5)
    # one batch holding everything: exactly the data set's mean and unbiased variance
    recalibrate_bn(model, data, batch_size=256)
    assert torch.allclose(model[0].running_mean, x.mean(0), atol=1e-6)
    assert torch.allclose(model[0].running_var, x.var(0, unbiased=True), atol=1e-5)
    # num_batches limits the pass
    recalibrate_bn(model, data, batch_size=64, num_batches=1)
    assert torch.allclose(model[0].running_mean, chunks[0].mean(0), atol=1e-6)
    assert model[0].momentum == 0.1 and model.training


def test_recalibration_with_momentum_and_augmentation_as_the_sms_code():
    from sparseavg.data import Split

    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2))
    model[0].momentum = 0.5  # restored afterwards
    model[0].running_mean.fill_(-7.0)  # reset before the first batch
    x = torch.randn(192, 3) + torch.tensor([4.0, -2.0, 1.0])
    data = Split(x, torch.zeros(192, dtype=torch.long))
    model.eval()
    recalibrate_bn(model, data, batch_size=64, momentum=0.1)
    expected = torch.zeros(3)  # from the reset mean 0, each batch moves it by 10 %
    for chunk in x.split(64):
        expected = 0.9 * expected + 0.1 * chunk.mean(0)
    assert torch.allclose(model[0].running_mean, expected, atol=1e-6)
    assert model[0].momentum == 0.5 and not model.training
    exact = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2))
    recalibrate_bn(exact, data, batch_size=64)
    assert torch.allclose(exact[0].running_mean, x.mean(0), atol=1e-5)
    assert not torch.allclose(exact[0].running_mean, expected, atol=1e-2)
    with pytest.raises(ValueError, match="generator"):
        recalibrate_bn(model, data, augment=True)
    # with a generator the batches come in a drawn order: the same seed, the same statistics
    shuffled = [nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2)) for _ in range(2)]
    for m in shuffled:
        g = torch.Generator().manual_seed(3)
        recalibrate_bn(m, data, batch_size=64, momentum=0.1, generator=g)
    assert torch.equal(shuffled[0][0].running_mean, shuffled[1][0].running_mean)
    assert not torch.allclose(shuffled[0][0].running_mean, expected, atol=1e-6)
    # augment=True: each batch is augmented as in training, from the same generator
    seq = Split(
        torch.randn(128, 3, 6) + 2.0,
        torch.zeros(128, dtype=torch.long),
        Augmentation(crop_padding=2),
    )
    augmented, plain = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    for bn, augment in ((augmented, True), (plain, False)):
        g = torch.Generator().manual_seed(4)
        recalibrate_bn(bn, seq, batch_size=64, momentum=0.1, augment=augment, generator=g)
    g = torch.Generator().manual_seed(4)
    expected = torch.zeros(3)
    for xb, _ in seq.batches(64, generator=g, augment=True):
        expected = 0.9 * expected + 0.1 * xb.mean(dim=(0, 2))
    assert torch.allclose(augmented.running_mean, expected, atol=1e-6)
    assert not torch.allclose(plain.running_mean, expected, atol=1e-3)


def test_greedy_soup_adds_best_first_and_respects_the_accept_rule():
    states = [{"w": torch.tensor([v])} for v in (0.0, 4.0, 1.0, 2.0)]
    target = 1.5

    def score(state):
        return -abs(float(state["w"]) - target)

    result = greedy_soup(states, score)
    # ranked: 1.0 (-0.5), 2.0 (-0.5), 0.0 (-1.5), 4.0 (-2.5); ties by index: 2 then 3
    assert result.selected == (2, 3)  # avg 1.5 -> score 0; adding 0.0 (avg 1.0) or 4.0 loses
    assert float(result.state["w"]) == pytest.approx(1.5)
    assert result.score == 0.0
    flat = [{"w": torch.tensor([1.0])}, {"w": torch.tensor([1.0])}]
    assert greedy_soup(flat, lambda s: 0.5, accept="ge").selected == (0, 1)
    assert greedy_soup(flat, lambda s: 0.5, accept="gt").selected == (0,)


def test_ensemble_of_identical_models_equals_the_model():
    model = tiny_net()
    train(model, tiny_split(), TrainSettings(epochs=1, batch_size=16), seed=0)
    data = tiny_split(n=40, seed=5)
    single = evaluate(model, data)
    ens = evaluate_ensemble([model, model], data, batch_size=16)
    assert ens.accuracy == single.accuracy
    assert ens.loss == pytest.approx(single.loss, rel=1e-5)
    # of different members: the mean of their probabilities, not of their logits
    other = tiny_net(seed=1)
    other.eval()
    model.eval()
    with torch.no_grad():
        p, q = model(data.x).softmax(1), other(data.x).softmax(1)
    mixed = ensemble_probabilities([model, other], data, batch_size=16)
    assert torch.allclose(mixed, (p + q) / 2, atol=1e-6)
    with torch.no_grad():
        logit_mean = ((model(data.x) + other(data.x)) / 2).softmax(1)
    assert not torch.allclose(mixed, logit_mean, atol=1e-4)


@pytest.mark.parametrize("momentum", [None, 0.1])
def test_recalibration_on_no_batches_is_refused_and_keeps_the_statistics(momentum):
    """No batches would reset every BatchNorm layer to mean 0, variance 1 (a user's
    ``bn_batches`` function returning an empty loader): refused, the statistics unchanged."""
    from sparseavg.averaging.batchnorm import recalibrate_bn_on

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model[1].running_mean.fill_(2.0)
    model[1].running_var.fill_(3.0)
    with pytest.raises(ValueError, match=r"^no batches to recalibrate BatchNorm on"):
        recalibrate_bn_on(model, iter([]), momentum=momentum)
    assert model[1].running_mean.tolist() == [2.0] * 4
    assert model[1].running_var.tolist() == [3.0] * 4
    assert model[1].momentum == 0.1
