"""GMP as the BIMP code schedules it (ZIB-IOL/BIMP scratchStrategies.GMP), pinned with exact
numbers and set against our GradualMagnitudePruning (issue 17)."""

import pytest
import torch

from sparseavg.pruning.gmp_reference import (
    IntervalGradualPruning,
    bimp_gmp_schedule,
    bimp_pruned_counts,
    required_sparsity,
)
from sparseavg.pruning.mask import Mask
from sparseavg.pruning.schedule import GradualMagnitudePruning, cubic_sparsity

# 12 weights, a permutation of 1..12 in magnitude
WEIGHTS = {"w": torch.tensor([[5.0, -12, 3, 8], [-1, 7, 11, -2], [9, 4, -10, 6]])}


def test_schedule_epochs_and_sparsities():
    # 10 epochs, interval 2: n = 10 // 2 - 1 = 4 steps after epochs 2, 4, 6, 8; span 8
    s = bimp_gmp_schedule(10, 2, 0.9)
    assert [e for e, _ in s] == [2, 4, 6, 8]
    # 0.9 (1 - (1 - t/8)^3): 0.9 (1 - 27/64), 0.9 (1 - 1/8), 0.9 (1 - 1/64), 0.9
    assert [x for _, x in s] == pytest.approx([0.5203125, 0.7875, 0.8859375, 0.9], abs=1e-15)
    assert s[-1][1] == 0.9
    # the same cubic as ours from epoch 0 to n * interval, bit for bit
    assert [x for _, x in s] == [
        cubic_sparsity(e, start_step=0, end_step=8, final_sparsity=0.9) for e, _ in s
    ]
    assert bimp_gmp_schedule(10, 3, 0.5) == [(3, 0.5 + -0.5 * 0.5**3), (6, 0.5)]  # n = 2
    assert bimp_gmp_schedule(4, 2, 0.5) == [(2, 0.5)]
    with pytest.raises(ValueError, match="too large"):
        bimp_gmp_schedule(5, 3, 0.5)


def test_counts_of_the_references_rounding():
    s = bimp_gmp_schedule(10, 2, 0.9)
    # from scratch: round(12 s) = 6, 9, 11, 11
    assert bimp_pruned_counts(12, s, allow_recovering=True) == [6, 9, 11, 11]
    # extended: 6; + round(.5570 * 6) = 3; + round(.4632 * 3) = 1; + round(.1233 * 2) = 0
    assert bimp_pruned_counts(12, s, allow_recovering=False) == [6, 9, 10, 10]
    assert [required_sparsity(e, s) for e in (0, 1, 2, 3, 8, 10)] == [
        0.0,
        0.0,
        s[0][1],
        s[0][1],
        0.9,
        0.9,
    ]


def _run(schedule, weights_at=lambda epoch: WEIGHTS, epochs=10):
    mask = Mask.ones_like(WEIGHTS)
    pruned_at = {}
    for epoch in range(1, epochs + 1):
        new = schedule.update(epoch, weights_at(epoch), None, mask)
        if new is not None:
            mask = new
            pruned_at[epoch] = mask.num_pruned
    return mask, pruned_at


def test_interval_schedule_prunes_at_the_references_epochs_and_counts():
    mask, pruned_at = _run(IntervalGradualPruning(10, 2, 0.9))
    assert pruned_at == {2: 6, 4: 9, 6: 10, 8: 10}
    # the 2 largest of 12: |-12| and |11|
    assert mask["w"].tolist() == [
        [False, True, False, False],
        [False, False, True, False],
        [False, False, False, False],
    ]
    mask, pruned_at = _run(IntervalGradualPruning(10, 2, 0.9, allow_recovering=True))
    assert pruned_at == {2: 6, 4: 9, 6: 11, 8: 11}
    # ours prunes after every epoch of (start, end] and reaches round(0.9 * 12) = 11
    _, ours = _run(GradualMagnitudePruning(0, 8, 0.9))
    # round(12 * 0.9 (1 - (1 - t/8)^3)) for t = 1..6 = 4, 6, 8, 9, 10, 11; then already there
    assert ours == {1: 4, 2: 6, 3: 8, 4: 9, 5: 10, 6: 11}


def test_recovering_recomputes_from_dense_weights():
    # dense values of pruned weights (DPF, or the reference's weight_orig) can win back a place
    grown = {"w": WEIGHTS["w"].clone()}
    grown["w"][1, 0] = 20.0  # was -1, the smallest: pruned at epoch 2
    mask, _ = _run(
        IntervalGradualPruning(10, 2, 0.9, allow_recovering=True),
        weights_at=lambda e: WEIGHTS if e < 4 else grown,
    )
    assert mask["w"][1, 0] and mask.num_alive == 1
    extended, _ = _run(
        IntervalGradualPruning(10, 2, 0.9),
        weights_at=lambda e: WEIGHTS if e < 4 else grown,
    )
    assert not extended["w"][1, 0]
