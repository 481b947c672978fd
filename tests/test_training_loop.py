"""The fast training loop: the same results as the plain loop it replaced."""

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import tiny_net, tiny_split
from sparseavg.data import Split
from sparseavg.data.augment import Augmentation, host_to_device
from sparseavg.pruning import Mask, magnitude_prune, prunable_parameters
from sparseavg.recipes import resolve_config
from sparseavg.recipes.standard import base_settings, retrain_settings
from sparseavg.training import TrainSettings, learning_rate, train
from sparseavg.training.loop import build_optimizer, steps_per_epoch
from sparseavg.training.masking import MaskEnforcer
from sparseavg.utils.seeding import make_generator


def _reference_train(model, data, settings, seed, mask):
    """The plain loop ``train`` was written from: lr set every step, ``zero_grad``, losses
    stored one by one. Returns ``(state, epoch mean losses)``."""
    spe = steps_per_epoch(data, settings.batch_size, settings.drop_last)
    total = settings.epochs * spe
    optimizer = build_optimizer(model, settings)
    enforcer = MaskEnforcer(model, mask)
    enforcer.mask_weights()
    losses = []
    step = 0
    model.train()
    for epoch in range(settings.epochs):
        g = make_generator(seed, "epoch", epoch)
        step_losses = torch.empty(spe)
        batches = data.batches(
            settings.batch_size, generator=g, augment=True, drop_last=settings.drop_last
        )
        for i, (x, y) in enumerate(batches):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(settings, step, total, None)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            enforcer.mask_gradients()
            optimizer.step()
            enforcer.mask_weights()
            step_losses[i] = loss.detach()
            step += 1
        losses.append(float(step_losses.mean()))
    return {k: v.clone() for k, v in model.state_dict().items()}, losses


def _augmented_split() -> Split:
    data = tiny_split(n=96)
    return Split(data.x, data.y, Augmentation(crop_padding=2, horizontal_flip=True))


@pytest.mark.parametrize(
    "settings",
    [
        TrainSettings(epochs=2, batch_size=16, lr=0.1, nesterov=True, warmup=0.2),
        TrainSettings(epochs=2, batch_size=16, optimizer="adamw", lr=0.01, schedule="constant"),
        TrainSettings(epochs=2, batch_size=20, lr=0.1, schedule="llr"),  # 96 = 4 x 20 + 16
        TrainSettings(epochs=2, batch_size=20, lr=0.1, schedule="llr", drop_last=True),
    ],
)
@pytest.mark.parametrize("masked", [False, True])
def test_train_gives_the_bits_of_the_plain_loop(settings, masked):
    mask = None
    if masked:
        params = prunable_parameters(tiny_net())
        mask = magnitude_prune(params, Mask.ones_like(params), 0.5)
    expected, expected_losses = _reference_train(tiny_net(), _augmented_split(), settings, 3, mask)
    result = train(tiny_net(), _augmented_split(), settings, seed=3, mask=mask)
    assert result.losses == expected_losses
    for k, v in expected.items():
        assert torch.equal(result.state[k], v), k


def test_progress_gets_every_step_and_every_epoch_end_with_its_loss():
    calls = []
    settings = TrainSettings(epochs=3, batch_size=8, lr=0.05)
    result = train(
        tiny_net(), tiny_split(n=96), settings, seed=0, progress=lambda *a: calls.append(a)
    )
    spe = 96 // 8
    assert [c for c in calls if c[2] is None] == [(s, 3 * spe, None) for s in range(1, 37)]
    ends = [c for c in calls if c[2] is not None]
    assert ends == [(spe * (e + 1), 3 * spe, loss) for e, loss in enumerate(result.losses)]


def test_progress_stopping_mid_epoch_reports_the_stop_step():
    calls = []
    settings = TrainSettings(epochs=2, batch_size=8, lr=0.05)

    def report(*args):
        calls.append(args)

    result = train(tiny_net(), tiny_split(n=96), settings, seed=0, stop_step=17, progress=report)
    # 12 steps an epoch: the stop is reported with the loss of the one finished epoch
    assert result.losses == [calls[-1][2]] and calls[-1][:2] == (17, 17)


def test_host_to_device_on_the_cpu_is_a_plain_copy():
    t = torch.arange(5)
    assert torch.equal(host_to_device(t, torch.device("cpu")), t)


@pytest.mark.skipif(
    not os.environ.get("SPARSEAVG_TEST_COMPILE"),
    reason="torch.compile's cold start takes about 35 s on 2 CPU cores, over the test budget; "
    "set SPARSEAVG_TEST_COMPILE=1 to run it",
)
def test_compiled_forward_trains_to_the_same_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    data = Split(x, (x[:, 0] > 0).long())
    settings = TrainSettings(epochs=3, batch_size=32, lr=0.1, augment=False)

    def mlp() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))

    eager = train(mlp(), data, settings, seed=0)
    compiled = train(mlp(), data, settings, seed=0, compile=True)
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)
    assert compiled.losses[-1] < compiled.losses[0]


@pytest.mark.parametrize(("drop_last", "steps"), [(False, 3), (True, 2)])
def test_an_epoch_trains_its_last_partial_batch_unless_drop_last(drop_last, steps):
    """Issue 16: every epoch dropped its last partial batch (10 samples in batches of 4: 2
    steps an epoch, an llr schedule of 4 steps); the SMS code and open_lth keep it: 3 steps
    an epoch, a schedule of 3 x epochs = 6 steps. ``drop_last`` keeps the old count."""
    data = tiny_split(n=10)
    settings = TrainSettings(
        epochs=2, batch_size=4, lr=0.1, schedule="llr", augment=False, drop_last=drop_last
    )
    assert steps_per_epoch(data, 4, drop_last) == steps
    seen = []
    result = train(tiny_net(), data, settings, seed=0, progress=lambda s, t, _: seen.append(t))
    total = 2 * steps
    assert result.steps == total and set(seen) == {total}
    assert [e.step for e in result.history] == [steps, total]
    # each epoch's last rate: llr over all 2 x steps steps, no warm-up
    expected = [0.1 * (1 - (steps - 1) / total), 0.1 * (1 - (total - 1) / total)]
    assert [e.lr for e in result.history] == pytest.approx(expected, abs=1e-15)


def test_the_partial_batch_changes_the_weights_and_the_config_passes_drop_last_on():
    data = tiny_split(n=10)
    kept, dropped = (
        train(
            tiny_net(),
            data,
            TrainSettings(epochs=1, batch_size=4, schedule="constant", drop_last=d),
            seed=0,
        )
        for d in (False, True)
    )
    assert (kept.steps, dropped.steps) == (3, 2)
    assert not torch.equal(kept.state["fc.weight"], dropped.state["fc.weight"])
    assert base_settings(resolve_config({})).drop_last is False
    config = resolve_config({"recipe": "sms", "train": {"drop_last": True}})
    assert base_settings(config).drop_last and retrain_settings(config).drop_last
