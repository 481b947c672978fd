"""Learning-rate schedules: the SMS code's retraining schedules, warm-ups and the SWA phase."""

import warnings
from bisect import bisect_right

import pytest
import torch

from sparseavg.recipes import resolve_config
from sparseavg.recipes.standard import base_settings, retrain_settings
from sparseavg.training import TrainSettings, learning_rate, smallest_rate

DENSE = TrainSettings(epochs=10, lr=0.1, schedule="cosine")  # the run being retrained
SPE = 20  # steps per epoch: the dense run has 200 steps


def rates(settings, steps=None):
    total = steps if steps is not None else settings.epochs * SPE
    return [learning_rate(settings, s, total, None) for s in range(total)]


def dense_rate(step):
    return learning_rate(DENSE, step, 200, None)


class _Chained(torch.optim.lr_scheduler.SequentialLR):
    """torch's SequentialLR stepping only the active scheduler, as the SMS code chains its
    warm-up and body."""

    def step(self):  # type: ignore[override]
        self.last_epoch += 1
        self._schedulers[bisect_right(self._milestones, self.last_epoch)].step()


def sms_code_rates(kind, total, peak, low=0.0):
    """The per-step rates of the SMS code's construction on torch's schedulers: rate 0, a
    cosine warm-up over int(0.1 * total) steps to ``peak``, then the body, chained at the
    milestone warm-up + 1."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    warm = int(0.1 * total)
    for group in opt.param_groups:
        group["lr"] = 0.0 if warm else peak
    rest = total - warm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "llr":
            body = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0, total_iters=rest)
        else:
            body = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=rest, eta_min=low)
        body.base_lrs = [peak]
        if warm:
            ramp = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=warm, eta_min=peak)
            sched = _Chained(opt, schedulers=[ramp, body], milestones=[warm + 1])
        else:
            sched = body
        out = []
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return out


@pytest.mark.parametrize("total", [35, 100, 391])
def test_llr_matches_the_sms_code_up_to_its_repeated_peak_step(total):
    ours = rates(TrainSettings(epochs=1, lr=0.1, schedule="llr", warmup=0.1), total)
    theirs = sms_code_rates("llr", total, 0.1)
    warm = int(0.1 * total)
    assert ours[: warm + 1] == pytest.approx(theirs[: warm + 1], abs=1e-12)  # the warm-up
    # SequentialLR repeats the peak for one step: the code's body runs one step behind ours
    assert ours[warm:-1] == pytest.approx(theirs[warm + 1 :], abs=1e-9)
    assert (
        max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) <= 0.1 / (total - warm) + 1e-12
    )


def test_clr_decays_to_the_dense_runs_smallest_rate_like_the_sms_code():
    settings = TrainSettings(epochs=2, lr=0.1, schedule="clr", warmup=0.1, original=DENSE)
    low = smallest_rate(DENSE, 200)
    assert low == pytest.approx(min(dense_rate(s) for s in range(200)))
    ours = rates(settings)
    theirs = sms_code_rates("clr", 40, 0.1, low)
    assert ours[0] == 0.0 and max(ours) <= 0.1 and ours[-1] > low
    assert ours[:5] == pytest.approx(theirs[:5], abs=1e-12)  # the warm-up
    # one step behind, as for llr; torch's recursive cosine drifts by up to 2e-4 (its step
    # after the warm-up even overshoots the peak, 0.10019)
    assert ours[4:-1] == pytest.approx(theirs[5:], abs=2e-4)
    assert max(theirs) > 0.1 >= max(ours)


def test_ft_is_constant_at_the_dense_runs_smallest_rate():
    ours = rates(TrainSettings(epochs=2, lr=0.1, schedule="ft", original=DENSE))
    assert ours == [pytest.approx(dense_rate(199))] * 40


def test_lrw_replays_the_dense_runs_last_epochs():
    ours = rates(TrainSettings(epochs=3, lr=0.1, schedule="lrw", original=DENSE))
    assert ours == pytest.approx([dense_rate(s) for s in range(140, 200)])


def test_slr_compresses_the_dense_schedule_after_a_warm_up():
    ours = rates(TrainSettings(epochs=2, lr=0.1, schedule="slr", warmup=0.1, original=DENSE))
    warm = 4  # int(0.1 * 40)
    assert ours[0] == 0.0 and ours[warm] == pytest.approx(0.1)
    expected = [dense_rate(int(j * 200 / 36)) for j in range(36)]
    assert ours[warm:] == pytest.approx(expected)
    warm_dense = TrainSettings(epochs=10, lr=0.1, schedule="cosine", warmup=0.1)
    slr = rates(TrainSettings(epochs=2, lr=0.1, schedule="slr", warmup=0.1, original=warm_dense))
    assert slr[warm : warm + 4] == [0.1] * 4  # the dense warm-up's steps read as the peak


def test_derived_schedules_need_the_original_and_lrw_cannot_be_longer():
    with pytest.raises(ValueError, match="needs the original"):
        TrainSettings(schedule="ft")
    with pytest.raises(ValueError, match="lrw rewinds the last 12 epochs"):
        TrainSettings(epochs=12, schedule="lrw", original=DENSE)


def test_swa_anneal_and_switch_readings():
    anneal = TrainSettings(lr=0.1, schedule="cosine", swa_start=0.75, swa_lr=0.05)
    got = [learning_rate(anneal, s, 100, 75) for s in (0, 74, 75, 99)]
    assert got == pytest.approx([0.1, 0.05, 0.05, 0.05], abs=1e-4)
    switch = TrainSettings(
        lr=0.1, schedule="cosine", swa_start=0.75, swa_lr=0.05, swa_schedule="switch"
    )
    cosine = TrainSettings(lr=0.1, schedule="cosine")
    for s in (0, 30, 74):
        assert learning_rate(switch, s, 100, 75) == learning_rate(cosine, s, 100, None)
    assert learning_rate(switch, 74, 100, 75) < 0.05 < learning_rate(anneal, 70, 100, 75)
    assert learning_rate(switch, 75, 100, 75) == 0.05


@pytest.mark.parametrize(
    ("total", "overshoot_percent"),
    [(20, 0.7654), (40, 0.1906), (100, 0.0305), (200, 0.0076)],
)
def test_the_sms_codes_clr_overshoot_depends_on_the_retraining_length(total, overshoot_percent):
    """docs/recipes.md's numbers: torch's recursive cosine after SequentialLR's repeated peak
    overshoots the peak on the step after the warm-up, less the longer the retraining."""
    theirs = sms_code_rates("clr", total, 0.1, smallest_rate(DENSE, 200))
    assert (max(theirs) / 0.1 - 1) * 100 == pytest.approx(overshoot_percent, abs=5e-5)
    ours = rates(
        TrainSettings(epochs=total // 20, lr=0.1, schedule="clr", warmup=0.1, original=DENSE)
    )
    assert len(ours) == total and max(ours) <= 0.1


def test_a_dense_llr_with_warmup_zero_has_no_warm_up():
    """Issue 16: a dense ``train.schedule = "llr"`` always got a 10 % warm-up (rate 0.0 at
    step 0, 0.0024 at step 1 of 100); the SMS code's dense linear schedule has none unless
    asked, so warm-up 0 is none: 0.1 at step 0, 0.099 at step 1. A fine-tuning cycle keeps
    the SMS code's 10 %."""
    config = resolve_config({"recipe": "imp", "train": {"schedule": "llr", "epochs": 10}})
    dense = base_settings(config)
    assert dense.warmup == 0.0
    assert [learning_rate(dense, s, 100, None) for s in (0, 1, 50)] == pytest.approx(
        [0.1, 0.099, 0.05], abs=1e-15
    )
    retrain = retrain_settings(resolve_config({"recipe": "sms", "train": {"epochs": 10}}))
    assert (retrain.schedule, retrain.warmup) == ("llr", 0.1)
    assert [learning_rate(retrain, s, 100, None) for s in (0, 10)] == pytest.approx([0.0, 0.1])
    warm = TrainSettings(epochs=10, lr=0.1, schedule="llr", warmup=0.1)
    assert learning_rate(warm, 0, 100, None) == 0.0  # a warm-up asked for is kept
