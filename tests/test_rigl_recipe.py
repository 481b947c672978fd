"""RigL (Evci et al. 2020) in the training loop and as the ``rigl`` recipe, on tiny models with
exact counts (issue 17). Reference: google-research/rigl at d39fc7d, docs/dst-design.md."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_net, tiny_split
from sparseavg.pruning import Mask, StepMaskSchedule, prunable_parameters
from sparseavg.pruning.rigl import (
    RigLSchedule,
    alive_counts,
    erk_densities,
    random_mask,
    rigl_drop_fraction,
    rigl_interval,
)
from sparseavg.training import TrainSettings, train

pytestmark = pytest.mark.usefixtures("one_thread")


class _Spy:
    """A :class:`StepMaskSchedule` around another that notes every update it makes."""

    needs_gradients = False

    def __init__(self, inner: RigLSchedule) -> None:
        self.inner = inner
        self.calls: list[dict] = []

    def update(self, epochs_done, weights, gradients, mask):
        return None

    def updates_at(self, step, steps_per_epoch, total_steps):
        return self.inner.updates_at(step, steps_per_epoch, total_steps)

    def update_step(self, step, steps_per_epoch, total_steps, weights, gradients, mask):
        new, grown = self.inner.update_step(
            step, steps_per_epoch, total_steps, weights, gradients, mask
        )
        self.calls.append(
            {
                "step": step,
                "weights": {k: v.clone() for k, v in weights.items()},
                "gradients": {k: v.clone() for k, v in gradients.items()},
                "mask": mask,
                "new": new,
                "grown": grown,
            }
        )
        return new, grown


def _sparse_net():
    """TinyConvNet at ERK density 0.5: conv.weight 17 of 36 alive, fc.weight 386 of 768."""
    model = tiny_net(0)
    shapes = {n: tuple(p.shape) for n, p in prunable_parameters(model).items()}
    counts = alive_counts(shapes, erk_densities(shapes, 0.5))
    mask = random_mask(shapes, counts, generator=torch.Generator().manual_seed(0))
    mask.apply_(model)
    return model, mask


# 80 samples in batches of 8: 10 steps an epoch, 20 in all; ΔT = 3, end 0.75 -> step 15
SETTINGS = TrainSettings(epochs=2, batch_size=8, lr=0.1, momentum=0.9, weight_decay=0.01)


def _run(stop_step=None, on_epoch_end=None):
    model, mask = _sparse_net()
    spy = _Spy(RigLSchedule(interval=3))
    result = train(
        model,
        tiny_split(n=80),
        SETTINGS,
        seed=0,
        mask=mask,
        mask_schedule=spy,
        stop_step=stop_step,
        on_epoch_end=on_epoch_end,
    )
    return result, spy, mask


def test_rigl_schedule_is_a_step_schedule_with_the_references_steps_and_fractions():
    schedule = RigLSchedule(interval=3)
    assert isinstance(schedule, StepMaskSchedule)
    assert schedule.end_step(20) == 15 and schedule.update_steps(20) == [0, 3, 6, 9, 12, 15]
    assert [s for s in range(20) if schedule.updates_at(s, 10, 20)] == [0, 3, 6, 9, 12, 15]
    # the automatic ΔT: rigl's 100 where that leaves 20 updates, else end_step // 20
    assert [rigl_interval(e) for e in (1, 39, 40, 210, 1999, 2000, 75000)] == [
        1, 1, 2, 10, 99, 100, 100
    ]  # fmt: skip
    assert RigLSchedule().frequency(280) == 10  # MNIST-1D: 10 epochs of 28 steps, end 210
    assert RigLSchedule().update_steps(280) == list(range(0, 211, 10))
    # cosine from 0.3 at step 0 to 0 at the end step
    assert rigl_drop_fraction(0, end_step=15) == 0.3
    assert rigl_drop_fraction(15, end_step=15) == 0.0


def test_the_loop_updates_at_the_schedules_steps_with_constant_alive_counts():
    result, spy, mask = _run()
    assert [c["step"] for c in spy.calls] == [0, 3, 6, 9, 12, 15]
    assert result.steps == 20
    for call in spy.calls:
        for name, alive in call["mask"].items():
            assert int(call["new"][name].sum()) == int(alive.sum()) == int(mask[name].sum())
    # per layer (alive, dropped and not regrown = grown): int(float32(alive) * fraction)
    # drops, some of them regrown at once
    moved = [
        {n: (int((c["mask"][n] & ~c["new"][n]).sum()), int(c["grown"][n].sum())) for n in mask}
        for c in spy.calls
    ]
    assert moved == [
        {"conv.weight": (5, 5), "fc.weight": (86, 86)},
        {"conv.weight": (2, 2), "fc.weight": (80, 80)},
        {"conv.weight": (2, 2), "fc.weight": (59, 59)},
        {"conv.weight": (1, 1), "fc.weight": (36, 36)},
        {"conv.weight": (0, 0), "fc.weight": (11, 11)},
        {"conv.weight": (0, 0), "fc.weight": (0, 0)},
    ]
    assert result.mask == spy.calls[-1]["new"]
    assert result.mask.num_alive == 17 + 386


def test_grown_weights_are_the_largest_dense_gradients_outside_the_kept_ones():
    _, spy, _ = _run()
    for call in spy.calls:
        fraction = rigl_drop_fraction(call["step"], end_step=15)
        for name, alive in call["mask"].items():
            w, g = call["weights"][name].reshape(-1), call["gradients"][name].reshape(-1)
            a, new = alive.reshape(-1), call["new"][name].reshape(-1)
            n_drop = int(torch.tensor(float(a.sum())) * torch.tensor(fraction))
            # the weights kept: the alive - n_drop largest |w| among the alive (no ties here)
            kept_order = torch.argsort(torch.where(a, w.abs(), -1.0), descending=True)
            kept = torch.zeros_like(a)
            kept[kept_order[: int(a.sum()) - n_drop]] = True
            assert (kept <= new).all()
            # the others: the n_drop largest |g| where not kept (no ties here either)
            grow = torch.argsort(torch.where(kept, -1.0, g.abs()), descending=True)[:n_drop]
            expected = kept.clone()
            expected[grow] = True
            assert torch.equal(new, expected), (call["step"], name)
            # the pruned weights the loop handed over were exactly 0 (kept 0 between updates)
            assert not w[~a].any(), (call["step"], name)


def test_an_update_step_takes_no_optimizer_step_and_grown_weights_start_at_zero():
    """Step 9, the last of epoch 0, updates the mask: the checkpoint after it holds the weights
    after step 8 under the new mask, grown weights and their momentum exactly 0."""
    checkpoints = []
    _, spy, _ = _run(on_epoch_end=checkpoints.append)
    before, _, _ = _run(stop_step=9)  # the weights after steps 0..8
    update = next(c for c in spy.calls if c["step"] == 9)
    state = checkpoints[0]
    assert state.step == 10 and Mask(state.mask) == update["new"]
    names = [n for n, _ in tiny_net().named_parameters()]
    momentum = {names[i]: s["momentum_buffer"] for i, s in state.optimizer["state"].items()}
    for name, new in update["new"].items():
        grown = update["grown"][name]
        assert grown.any()
        expected = before.state[name] * (new & ~grown)
        assert torch.equal(state.model[name], expected), name
        assert not state.model[name][grown].any() and not momentum[name][grown].any()
        assert not momentum[name][~new].any()
    # the biases and BatchNorm trained on: unchanged by a step without an optimizer step
    for name in ("conv.bias", "fc.bias", "bn.weight"):
        assert torch.equal(state.model[name], before.state[name]), name
