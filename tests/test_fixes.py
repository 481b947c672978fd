"""Results that were wrong before issue 8, each pinned by a test that failed on the code
before the fix (the numbers it saw are in the comments)."""

import itertools

import pytest
import torch

from engine_helpers import TrainCalls, tiny_run
from sparseavg.config import ConfigError
from sparseavg.data import load_dataset
from sparseavg.models import build_model
from sparseavg.recipes import resolve_config
from sparseavg.training import TrainSettings, learning_rate
from sparseavg.utils.files import load_tensors


@pytest.mark.parametrize(
    ("vary", "field", "base"),
    [("weight_decay", "weight_decay", 5e-4), ("length", "epochs", 2), ("lr", "lr", 0.05)],
)
def test_a_cycle_of_one_model_trains_the_base_settings(vary, field, base, tmp_path, monkeypatch):
    """SMS's dense cycle 0 trains one model: it must get train.*, not the first ingredient's
    varied value (before: weight decay 2.5e-4, 1 of 2 epochs, lr 0.025)."""
    calls = TrainCalls(monkeypatch)
    values = {
        "recipe": "sms",
        "train": {"weight_decay": 5e-4},
        "ingredients": {"vary": vary, "values": [0.5, 1.0, 2.0]},
    }
    tiny_run(tmp_path, values)
    trained = calls.ingredients()
    assert len(trained) == 4  # cycle 0: the dense model; cycle 1: three ingredients
    assert getattr(trained[0]["settings"], field) == base
    varied = [getattr(c["settings"], field) for c in trained[1:]]
    if field == "epochs":
        assert varied == [1, 2, 4]
    else:
        assert varied == pytest.approx([base * 0.5, base, base * 2.0])


@pytest.mark.parametrize("steps", [35, 7, 17, 99, 100, 1001])
def test_llr_warmup_starts_at_zero_and_never_exceeds_the_peak(steps):
    """Before: peak * (step + 1) / (0.1 * steps), 0.1143 at peak 0.1 for 35 steps."""
    settings = TrainSettings(schedule="llr", lr=0.1, warmup=0.1)  # a retraining's
    rates = [learning_rate(settings, s, steps, None) for s in range(steps)]
    assert max(rates) <= 0.1
    warm = int(0.1 * steps)  # the SMS code's int(0.1 * iterations): none below 10 steps
    assert rates[0] == (0.0 if warm else 0.1)
    if warm:
        assert rates[warm] == pytest.approx(0.1)
        assert all(a <= b for a, b in itertools.pairwise(rates[: warm + 1]))


def test_a_linear_warmup_never_exceeds_the_peak():
    settings = TrainSettings(schedule="cosine", lr=0.2, warmup=0.05)  # 1.75 warm-up steps
    rates = [learning_rate(settings, s, 35, None) for s in range(35)]
    assert rates[0] == 0.0 and max(rates) == pytest.approx(0.2) and max(rates) <= 0.2


def test_a_step_schedule_with_swa_is_an_explicit_choice():
    """Before: the step schedule decayed to 0.001 and jumped back to swa_lr = 0.05 at the SWA
    start, without a word."""
    values = {"train": {"schedule": "step", "swa": True}}
    with pytest.raises(ConfigError, match="swa_schedule = 'switch'"):
        resolve_config({"recipe": "imp-swa", **values})
    config = resolve_config(
        {"recipe": "imp-swa", "train": {"schedule": "step", "swa_schedule": "switch"}}
    )
    assert config.train.swa_schedule == "switch"
    # 'switch': the step schedule laid over all 100 steps, then the constant swa_lr
    s = TrainSettings(lr=0.1, schedule="step", swa_start=0.75, swa_lr=0.05, swa_schedule="switch")
    assert [learning_rate(s, i, 100, 75) for i in (49, 50, 74, 75, 99)] == pytest.approx(
        [0.1, 0.01, 0.01, 0.05, 0.05]
    )


def test_sms_varying_weight_decay_shares_one_seed(tmp_path, monkeypatch):
    """The SMS code varies one hyperparameter at a time: with vary = weight_decay every
    ingredient sees the same batch order (before: three different seeds)."""
    calls = TrainCalls(monkeypatch)
    values = {"recipe": "sms", "ingredients": {"vary": "weight_decay"}}
    tiny_run(tmp_path / "shared", values)
    soup = calls.ingredients()[1:]
    assert len({c["seed"] for c in soup}) == 1
    assert all(torch.equal(c["first_labels"], soup[0]["first_labels"]) for c in soup)
    calls.calls.clear()
    own = {"recipe": "sms", "ingredients": {"vary": "weight_decay", "seed_per_ingredient": True}}
    tiny_run(tmp_path / "own", own)
    assert len({c["seed"] for c in calls.ingredients()[1:]}) == 3


def test_single_models_are_recalibrated_like_the_sms_code(tmp_path, monkeypatch):
    """IMP-FT (the SMS code's IMP) recalibrates BatchNorm of every model with momentum 0.1
    before it is evaluated and starts the next phase (before: never, for single models)."""
    calls = TrainCalls(monkeypatch)
    # momentum 0.1 and 'always' are the recipe's defaults; no augmentation: a fixed order
    run = tiny_run(tmp_path, {"recipe": "imp-ft", "bn": {"augment": False}})
    trained = calls.ingredients()[-1]["result"].state
    combined = load_tensors(run / "cycle_01/combined.safetensors")
    key = "features.1.running_mean"
    assert not torch.equal(combined[key], trained[key])
    model = build_model("conv1d", 10, (1, 40), width=8)
    model.load_state_dict(trained)
    from sparseavg.averaging import recalibrate_bn

    data = load_dataset("mnist1d", val_fraction=0.1)
    recalibrate_bn(model, data.train, batch_size=128, momentum=0.1)
    assert torch.allclose(model.state_dict()[key], combined[key], atol=1e-6)
    # the weights are the trained ones; only BatchNorm's statistics changed
    assert torch.equal(combined["fc.weight"], trained["fc.weight"])
