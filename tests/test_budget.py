"""BIMP's budget as ZIB-IOL/BIMP splits it (pretrainedStrategies.IMP), and its ALLR, which is
the SMS code's (issue 17)."""

import math

import pytest

from sparseavg.pruning.budget import bimp_budget, split_epochs
from sparseavg.recipes.rules import AdaptivePeak


def test_split_as_the_reference():
    assert split_epochs(9, 3) == (3, 3, 3)  # divisible: equal parts
    assert split_epochs(10, 3) == (3, 3, 4)  # else the last phase takes the rest
    assert split_epochs(11, 4) == (2, 2, 2, 5)
    assert split_epochs(2, 3) == (0, 0, 2)
    assert split_epochs(7, 1) == (7,)
    for total in range(0, 40):
        for phases in range(1, 8):
            assert sum(split_epochs(total, phases)) == total
    with pytest.raises(ValueError, match="n_phases"):
        split_epochs(10, 0)


def test_budget_sums_and_per_phase_values():
    b = bimp_budget(30, 10, 3, 0.9)
    assert b.phase_epochs == (3, 3, 4) and b.n_phases == 3
    assert b.total_epochs == 40 == b.dense_epochs + sum(b.phase_epochs)
    assert b.prune_fraction == 1 - (1 - 0.9) ** (1.0 / 3)  # pretrainedStrategies.py:37
    assert (1 - b.prune_fraction) ** 3 == pytest.approx(0.1, abs=1e-15)
    assert [b.allr_floor(p) for p in range(3)] == [3 / 30, 3 / 30, 4 / 30]
    assert bimp_budget(2, 10, 2, 0.5).allr_floor(0) == 1.0  # phase longer than the dense run
    with pytest.raises(ValueError, match="goal_sparsity"):
        bimp_budget(30, 10, 3, 1.0)


def test_allr_is_the_sms_codes_adaptive_peak():
    # baseRunner.py:534-541: clip(d / sqrt(f) * maxLR, min(E_r / E_o, 1) * maxLR, maxLR),
    # E_o the dense run's epochs; our recipes' AdaptivePeak computes the same
    b = bimp_budget(30, 10, 3, 0.9)
    f, max_lr = b.prune_fraction, 0.1
    for phase, d in ((0, 0.2), (2, 0.01), (1, 0.9)):
        floor = min(float(b.phase_epochs[phase]) / b.dense_epochs, 1.0) * max_lr
        reference = min(max(d / math.sqrt(f) * max_lr, floor), max_lr)
        peak = AdaptivePeak(max_lr, f, b.dense_epochs).peak(d, b.phase_epochs[phase])
        assert peak == reference
    assert AdaptivePeak(max_lr, f, 30).peak(0.01, 4) == b.allr_floor(2) * max_lr
