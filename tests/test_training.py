import math

import pytest
import torch
from torch import nn

from helpers import tiny_net, tiny_split
from sparseavg.pruning import Mask, magnitude_prune, prunable_parameters
from sparseavg.training import (
    DivergenceError,
    TrainSettings,
    evaluate,
    learning_rate,
    train,
)
from sparseavg.utils.seeding import make_generator
from sparseavg.utils.state import clone_state


def _pruned_net(seed: int = 0, fraction: float = 0.5):
    model = tiny_net(seed)
    params = prunable_parameters(model)
    mask = magnitude_prune(params, Mask.ones_like(params), fraction)
    mask.apply_(model)
    return model, mask


@pytest.mark.parametrize(
    "settings",
    [
        TrainSettings(epochs=1, batch_size=8, lr=0.1, momentum=0.9, weight_decay=0.1),
        TrainSettings(
            epochs=1, batch_size=8, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1
        ),
        TrainSettings(epochs=1, batch_size=8, optimizer="adam", lr=0.01, weight_decay=0.1),
        TrainSettings(epochs=1, batch_size=8, optimizer="adamw", lr=0.01, weight_decay=0.1),
    ],
)
def test_pruned_weights_stay_exactly_zero_and_momentum_stays_zero(settings):
    model, mask = _pruned_net()
    data = tiny_split(n=80)  # 10 steps of 8
    seen = []
    result = train(model, data, settings, seed=0, mask=mask, on_epoch_end=seen.append)
    assert result.steps == 10
    for name in mask:
        w = result.state[name]
        assert torch.equal(w[~mask[name]], torch.zeros_like(w[~mask[name]]))
        assert (w[mask[name]] != 0).all()
    # optimizer buffers of pruned weights are exactly zero too
    opt = seen[-1].optimizer["state"]
    names = [n for n, _ in model.named_parameters()]
    for idx, buffers in opt.items():
        name = names[idx]
        if name in mask:
            for key, buf in buffers.items():
                if isinstance(buf, torch.Tensor) and buf.shape == mask[name].shape:
                    assert torch.equal(buf[~mask[name]], torch.zeros_like(buf[~mask[name]])), key


def test_same_seed_same_weights_other_seed_other_weights():
    settings = TrainSettings(epochs=2, batch_size=16, lr=0.05)
    runs = []
    for seed in (3, 3, 4):
        model, mask = _pruned_net()
        runs.append(train(model, tiny_split(), settings, seed=seed, mask=mask).state)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not torch.equal(runs[0]["fc.weight"], runs[2]["fc.weight"])


def test_resume_from_an_epoch_checkpoint_equals_uninterrupted():
    settings = TrainSettings(epochs=4, batch_size=16, lr=0.05, swa_start=0.5, swa_lr=0.02)
    model, mask = _pruned_net()
    checkpoints = []
    full = train(model, tiny_split(), settings, seed=7, mask=mask, on_epoch_end=checkpoints.append)
    assert [c.step for c in checkpoints] == [6, 12, 18, 24]
    resumed_model, _ = _pruned_net(seed=99)  # different weights: all must come from the state
    again = train(resumed_model, tiny_split(), settings, seed=7, mask=mask, resume=checkpoints[2])
    for k in full.state:
        assert torch.equal(full.state[k], again.state[k]), k
    assert full.swa_state is not None and again.swa_state is not None
    for k in full.swa_state:
        assert torch.equal(full.swa_state[k], again.swa_state[k]), k
    assert again.losses == full.losses


def test_swa_is_the_mean_of_one_snapshot_per_epoch_from_swa_start():
    settings = TrainSettings(epochs=4, batch_size=16, lr=0.05, swa_start=0.5, swa_lr=0.02)
    model, mask = _pruned_net()
    snaps = []
    result = train(model, tiny_split(), settings, seed=1, mask=mask, on_epoch_end=snaps.append)
    assert result.swa_count == 2
    expected = (snaps[2].model["fc.weight"] + snaps[3].model["fc.weight"]) / 2
    assert torch.allclose(result.swa_state["fc.weight"], expected, atol=1e-7)
    w = result.swa_state["fc.weight"]
    assert torch.equal(w[~mask["fc.weight"]], torch.zeros_like(w[~mask["fc.weight"]]))
    assert result.final_state is result.swa_state


def test_rewind_state_is_the_weights_after_rewind_step_steps():
    # no momentum: it restarts at 0 at start_step, so only without it can the continued run
    # below end exactly where the uninterrupted one does
    settings = TrainSettings(epochs=2, batch_size=16, lr=0.05, momentum=0.0)
    a = tiny_net()
    full = train(a, tiny_split(), settings, seed=2, rewind_step=4)
    b = tiny_net()
    short = train(b, tiny_split(), settings, seed=2, stop_step=4)
    assert short.steps == 4
    for k in short.state:
        assert torch.equal(full.rewind_state[k], short.state[k])
    # and training from the rewind point onwards starts the schedule at that step
    c = tiny_net()
    c.load_state_dict(short.state)
    cont = train(c, tiny_split(), settings, seed=2, start_step=4)
    assert cont.steps == 12
    for k in full.state:  # steps 4..11 with the batches and learning rates of those steps
        assert torch.equal(cont.state[k], full.state[k]), k


def test_divergence_is_detected_with_its_step():
    data = tiny_split()
    data = type(data)(data.x.clone(), data.y)
    data.x[:] = float("nan")
    with pytest.raises(DivergenceError) as info:
        train(tiny_net(), data, TrainSettings(epochs=2, batch_size=16), seed=0)
    assert info.value.step == 0 and info.value.epoch == 0


def test_learning_rate_schedules():
    s = TrainSettings(lr=0.1, schedule="cosine")
    assert learning_rate(s, 0, 100, None) == pytest.approx(0.1)
    assert learning_rate(s, 50, 100, None) == pytest.approx(0.05)
    s = TrainSettings(lr=0.1, schedule="step", milestones=(0.5, 0.75), gamma=0.1)
    assert [learning_rate(s, i, 100, None) for i in (49, 50, 75)] == pytest.approx(
        [0.1, 0.01, 0.001]
    )
    s = TrainSettings(lr=0.1, schedule="llr", warmup=0.1)  # warm-up from 0, linear decay to 0
    assert learning_rate(s, 0, 100, None) == 0.0
    assert learning_rate(s, 10, 100, None) == pytest.approx(0.1)
    assert learning_rate(s, 55, 100, None) == pytest.approx(0.05)
    # with SWA: cosine decays to swa_lr at the SWA start, then stays constant
    s = TrainSettings(lr=0.1, schedule="cosine", swa_start=0.75, swa_lr=0.05)
    assert learning_rate(s, 0, 100, 75) == pytest.approx(0.1)
    assert learning_rate(s, 74, 100, 75) == pytest.approx(0.05, abs=1e-4)
    assert learning_rate(s, 75, 100, 75) == 0.05 and learning_rate(s, 99, 100, 75) == 0.05


def test_settings_are_validated():
    with pytest.raises(ValueError, match="swa_start"):
        TrainSettings(swa_start=1.0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainSettings(optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epochs"):
        TrainSettings(epochs=-1)


def test_evaluate_counts_exactly():
    model = tiny_net()
    data = tiny_split(n=50)
    result = evaluate(model, data, batch_size=7)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        logits = model(data.x)
    assert result.count == 50
    assert result.accuracy == int((logits.argmax(1) == data.y).sum()) / 50
    expected = torch.nn.functional.cross_entropy(logits, data.y).item()
    assert math.isclose(result.loss, expected, rel_tol=1e-5)


def _two_conv_net() -> tuple[nn.Module, Mask]:
    """tiny_net's conv has one input channel, where channels-last is the default layout; a
    second conv (4 -> 4 channels) has a weight whose layout channels-last really changes."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    )
    params = prunable_parameters(model)
    mask = magnitude_prune(params, Mask.ones_like(params), 0.5)
    mask.apply_(model)
    return model, mask


def test_bf16_and_channels_last_train_and_keep_the_mask():
    model, mask = _two_conv_net()
    settings = TrainSettings(epochs=1, batch_size=16, precision="bf16", channels_last=True)
    result = train(model, tiny_split(), settings, seed=0, mask=mask)
    for name in mask:
        w = result.state[name]
        assert torch.equal(w[~mask[name]], torch.zeros_like(w[~mask[name]])), name
    assert all(
        torch.isfinite(t).all() for t in clone_state(model).values() if t.is_floating_point()
    )
    # both settings took effect: the weights are channels-last, and the run differs from the
    # same channels-last run in fp32
    conv = model[3].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    fp32_model, _ = _two_conv_net()
    fp32_settings = TrainSettings(epochs=1, batch_size=16, channels_last=True)
    fp32 = train(fp32_model, tiny_split(), fp32_settings, seed=0, mask=mask)
    assert not torch.equal(fp32.state["5.weight"], result.state["5.weight"])


class _RecordingSchedule:
    """A mask schedule that records the gradients it is given and prunes nothing."""

    needs_gradients = True

    def __init__(self):
        self.seen = []

    def update(self, epochs_done, weights, gradients, mask):
        self.seen.append((epochs_done, gradients))
        return None


def test_a_mask_schedule_sees_the_dense_gradients_of_each_epochs_last_step():
    model, mask = _pruned_net()
    schedule = _RecordingSchedule()
    settings = TrainSettings(epochs=2, batch_size=8, lr=0.1)
    result = train(model, tiny_split(n=80), settings, seed=0, mask=mask, mask_schedule=schedule)
    assert [e for e, _ in schedule.seen] == [1, 2]
    for _, grads in schedule.seen:
        assert set(grads) == set(mask)
        pruned = grads["fc.weight"][~mask["fc.weight"]]
        assert (pruned != 0).any()  # the gradients of pruned weights, before masking
    # epoch 1's are those of its 10th batch at the weights after 9 steps
    probe, _ = _pruned_net()
    train(probe, tiny_split(n=80), settings, seed=0, mask=mask, stop_step=9)
    probe.zero_grad(set_to_none=True)
    g = make_generator(0, "epoch", 0)
    x, y = list(tiny_split(n=80).batches(8, generator=g, augment=True, drop_last=True))[9]
    torch.nn.functional.cross_entropy(probe(x), y).backward()
    for name, grad in schedule.seen[0][1].items():
        assert torch.equal(grad, probe.get_parameter(name).grad), name
    w = result.state["fc.weight"]
    assert torch.equal(w[~mask["fc.weight"]], torch.zeros_like(w[~mask["fc.weight"]]))
    with pytest.raises(ValueError, match="needs a mask"):
        train(tiny_net(), tiny_split(n=80), settings, seed=0, mask_schedule=schedule)


def test_auto_precision_and_memory_format_turn_on_on_cuda_only():
    auto = TrainSettings()
    assert (auto.precision, auto.channels_last) == ("auto", None)
    assert auto.resolved("cuda") == (True, True)
    assert auto.resolved("cpu") == (False, False) == auto.resolved("mps")
    forced = TrainSettings(precision="bf16", channels_last=True)
    assert forced.resolved("cpu") == (True, True)
    off = TrainSettings(precision="fp32", channels_last=False)
    assert off.resolved("cuda") == (False, False)


def test_config_memory_format_reaches_the_settings():
    from sparseavg.recipes import resolve_config
    from sparseavg.recipes.standard import base_settings

    for value, expected in (("auto", None), ("on", True), ("off", False)):
        config = resolve_config({"train": {"channels_last": value}})
        assert base_settings(config).channels_last is expected
