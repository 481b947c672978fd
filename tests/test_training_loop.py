"""The fast training loop: same results as the plain loop, progress reports throttled."""

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import tiny_net, tiny_split
from sparseavg.data import Split
from sparseavg.data.augment import Augmentation, host_to_device
from sparseavg.pruning import Mask, magnitude_prune, prunable_parameters
from sparseavg.training import TrainSettings, learning_rate, train
from sparseavg.training.loop import (
    PROGRESS_INTERVAL_S,
    ProgressThrottle,
    build_optimizer,
    steps_per_epoch,
)
from sparseavg.training.masking import MaskEnforcer
from sparseavg.utils.seeding import make_generator


def _reference_train(model, data, settings, seed, mask):
    """The plain loop ``train`` was written from: lr set every step, ``zero_grad``, losses
    stored one by one. Returns ``(state, epoch mean losses)``."""
    spe = steps_per_epoch(data, settings.batch_size)
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
        batches = data.batches(settings.batch_size, generator=g, augment=True, drop_last=True)
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


def test_progress_gets_every_epoch_end_with_its_loss_and_few_step_reports():
    calls = []
    settings = TrainSettings(epochs=3, batch_size=8, lr=0.05)
    result = train(
        tiny_net(), tiny_split(n=96), settings, seed=0, progress=lambda *a: calls.append(a)
    )
    spe = 96 // 8
    ends = [c for c in calls if c[2] is not None]
    assert [(s, t) for s, t, _ in ends] == [(spe * (e + 1), 3 * spe) for e in range(3)]
    assert [loss for _, _, loss in ends] == result.losses
    assert calls[0] == (1, 3 * spe, None)  # the first step is reported at once
    assert calls[-1] == (3 * spe, 3 * spe, result.losses[-1])
    steps = [s for s, _, _ in calls]
    assert steps == sorted(steps) and all(t == 3 * spe for _, t, _ in calls)
    # throttled: 36 steps of a tiny model take far less than 36 intervals
    assert len(calls) - len(ends) < 3 * spe


def test_progress_stopping_mid_epoch_reports_the_stop_step():
    calls = []
    settings = TrainSettings(epochs=2, batch_size=8, lr=0.05)

    def report(*args):
        calls.append(args)

    result = train(tiny_net(), tiny_split(n=96), settings, seed=0, stop_step=17, progress=report)
    # 12 steps an epoch: the stop is reported with the loss of the one finished epoch
    assert result.losses == [calls[-1][2]] and calls[-1][:2] == (17, 17)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_throttle_passes_a_step_report_once_per_interval():
    calls = []
    clock = _Clock()
    throttle = ProgressThrottle(lambda *a: calls.append(a), interval=0.1, clock=clock)
    for step in range(1, 11):
        throttle.step(step, 50)
        clock.now += 0.03  # 0.1 s every 3.3 steps
    assert [c[0] for c in calls] == [1, 5, 9]
    throttle.epoch_end(10, 50, 1.5)
    assert calls[-1] == (10, 50, 1.5)
    throttle.step(11, 50)  # an epoch end restarts the interval
    assert calls[-1][0] == 10
    ProgressThrottle(None).step(1, 2)  # no receiver: nothing to do
    assert 0 < PROGRESS_INTERVAL_S <= 0.5  # a bar still moves several times a second


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
