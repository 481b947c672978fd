"""DPF (Lin et al. 2020, as ZIB-IOL/BIMP at 7bad593 runs it) in the training loop and as the
``dpf`` recipe, on tiny models with exact counts (issue 17). The pieces: tests/test_dpf.py."""

from __future__ import annotations

import pytest
import torch

from engine_helpers import (
    final_weights,
    rows,
    same_weights,
    tiny_config,
    tiny_run,
    use_executor,
)
from helpers import tiny_net, tiny_split
from sparseavg.cli.main import main
from sparseavg.config import ConfigError
from sparseavg.parallel import Sequential, Stacked
from sparseavg.pruning import FeedbackMaskSchedule, Mask, magnitude_prune, prunable_parameters
from sparseavg.pruning.dpf import DPFSchedule
from sparseavg.pruning.gmp_reference import bimp_gmp_schedule
from sparseavg.recipes import get_recipe, resolve_config
from sparseavg.training import TrainSettings, train
from sparseavg.utils.files import load_tensors
from test_dst_recipes import _Checkpoints, _StopAfter

pytestmark = pytest.mark.usefixtures("one_thread")

TOTAL = 1480  # prunable weights of the tiny conv1d (width 8), the first conv included


class _Fixed:
    """A feedback schedule that never changes its mask."""

    needs_gradients = False

    def update(self, epochs_done, weights, gradients, mask):
        return None

    def recomputes_after(self, steps_done):
        return False

    def recompute(self, steps_done, steps_per_epoch, weights, mask):
        raise AssertionError("never asked")


def _one_step(mask_schedule, mask):
    """One plain SGD step (lr 0.1) of the tiny conv net on 80 samples in one batch: the
    prunable weights the forward saw, their gradients, the checkpoint and the result."""
    model = tiny_net(0)
    start = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    seen, grads, checkpoints = {}, {}, []
    for name, p in prunable_parameters(model).items():
        p.register_hook(lambda g, name=name: grads.__setitem__(name, g.clone()))
    model.register_forward_pre_hook(
        lambda m, _: seen.update({n: p.detach().clone() for n, p in prunable_parameters(m).items()})
    )
    settings = TrainSettings(
        epochs=1, batch_size=80, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant"
    )
    result = train(
        model,
        tiny_split(n=80),
        settings,
        seed=0,
        mask=mask,
        mask_schedule=mask_schedule,
        on_epoch_end=checkpoints.append,
    )
    return start, seen, grads, checkpoints[0], result


def test_forward_runs_at_the_masked_weights_and_the_step_moves_the_dense_ones():
    model = tiny_net(0)
    weights = {n: p.detach() for n, p in prunable_parameters(model).items()}
    mask = magnitude_prune(weights, Mask.ones_like(weights), 0.5)
    assert isinstance(_Fixed(), FeedbackMaskSchedule)
    start, seen, grads, checkpoint, result = _one_step(_Fixed(), mask)
    for name, keep in mask.items():
        # the forward saw w ⊙ m; the gradient at that point reaches the pruned weights too
        assert torch.equal(seen[name], start[name] * keep)
        assert grads[name][~keep].ne(0).any(), name
        # the dense weights took the whole step (error feedback): w - 0.1 g, pruned included
        dense = checkpoint.model[name]
        assert torch.equal(dense, start[name].add(grads[name], alpha=-0.1)), name
        assert dense[~keep].ne(start[name][~keep]).any(), name
        # the model train returns is the masked one; its dense weights come beside it
        assert torch.equal(result.state[name], dense * keep), name
        assert torch.equal(result.dense_state[name], dense), name
    assert result.dense_state.keys() == result.state.keys()
    assert checkpoint.mask is not None and Mask(checkpoint.mask) == mask
    # without feedback the same step keeps the pruned weights at 0 and cuts their gradients
    *_, plain, plain_result = _one_step(None, mask)
    for name, keep in mask.items():
        assert not plain.model[name][~keep].any()
    assert plain_result.dense_state is None


def test_feedback_schedule_refuses_swa():
    model = tiny_net(0)
    mask = Mask.ones_like(prunable_parameters(model))
    settings = TrainSettings(epochs=2, batch_size=80, swa_start=0.5)
    with pytest.raises(ValueError, match="SWA would average them"):
        train(model, tiny_split(n=80), settings, seed=0, mask=mask, mask_schedule=_Fixed())


# 4 epochs of 15 steps (batch 512), the BIMP code's interval 1: steps after epochs 1, 2, 3 to
# 0.9 (1 - (1 - t / 3)^3): round(s * 1480) = 937, 1283, 1332
DPF_TINY = {
    "recipe": "dpf",
    "train": {"epochs": 4, "batch_size": 512},
    "pruning": {"cycles": 0, "rewind_epochs": 0.0},
}


class _Recomputes:
    """Notes every 16-step recomputation of a DPFSchedule: (steps done, pruned count)."""

    def __init__(self, monkeypatch) -> None:
        self.seen: list[tuple[int, int]] = []
        real = DPFSchedule.recompute

        def spy(schedule, steps_done, *args):
            new = real(schedule, steps_done, *args)
            self.seen.append((steps_done, new.num_pruned))
            return new

        monkeypatch.setattr(DPFSchedule, "recompute", spy)


def test_dpf_prunes_the_schedules_counts_and_keeps_dense_weights(tmp_path, monkeypatch):
    """Every epoch checkpoint: exactly the schedule's count pruned, the pruned weights' dense
    values and momentum alive (nothing zeroes them); recomputed after steps 16, 32, 48 at the
    sparsity in force; the cycle's model, mask, row and export are the masked model."""
    notes = _Checkpoints(monkeypatch)
    recomputes = _Recomputes(monkeypatch)
    run = tiny_run(tmp_path, DPF_TINY)
    assert [s for _, s in bimp_gmp_schedule(4, 1, 0.9)] == pytest.approx([19 / 30, 26 / 30, 0.9])
    assert [(n["step"], n["mask"].num_pruned) for n in notes.seen] == [
        (15, 937),
        (30, 1283),
        (45, 1332),
        (60, 1332),
    ]
    assert recomputes.seen == [(16, 937), (32, 1283), (48, 1332)]
    for n in notes.seen:
        for name, keep in n["mask"].items():
            assert n["model"][name][~keep].ne(0).any(), (n["step"], name)
            assert n["momentum"][name][~keep].ne(0).any(), (n["step"], name)
    final = Mask.load(run / "cycle_00" / "mask.safetensors")
    assert final == notes.seen[-1]["mask"]
    combined = load_tensors(run / "cycle_00" / "combined.safetensors")
    dense = notes.seen[-1]["model"]
    for name, keep in final.items():
        assert torch.equal(combined[name], dense[name] * keep), name
    [row] = rows(run)
    assert (row["role"], row["alive"], row["total"], row["headline"]) == (
        "combined",
        148,
        TOTAL,
        True,
    )
    out = str(tmp_path / "model.safetensors")
    assert main(["export", str(run), "--cycle", "0", "--out", out]) == 0
    exported = load_tensors(tmp_path / "model.safetensors")
    assert all(torch.equal(exported[k], combined[k]) for k in combined)


def test_dpf_resumed_mid_run_equals_an_uninterrupted_run(tmp_path):
    """Interrupted in epoch 3 (after the checkpoint of epoch 2: dense weights, a mask at
    1283 pruned), then resumed: the same rows, mask and weights, bit for bit."""
    from sparseavg.experiment import run

    config = tiny_config(DPF_TINY)
    reference = run(config, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "b", _StopAfter(35))
    [checkpoint] = (tmp_path / "b").rglob("checkpoint.pt")
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 30 and Mask(state["mask"]).num_pruned == 1283
    resumed = run(config, tmp_path / "b")
    assert rows(resumed) == rows(reference)
    assert same_weights(final_weights(resumed), final_weights(reference))
    a = Mask.load(resumed / "cycle_00" / "mask.safetensors")
    assert a == Mask.load(reference / "cycle_00" / "mask.safetensors")


def test_dpf_under_the_stacked_executor_equals_sequential(tmp_path, monkeypatch):
    """One model: the stacked executor trains it as sequential does (nothing to stack), bit
    for bit; several jobs with a mask schedule fall back, naming it (test_rigl_recipe)."""

    use_executor(monkeypatch, Sequential())
    sequential = tiny_run(tmp_path / "sequential", DPF_TINY)
    use_executor(monkeypatch, Stacked())
    stacked = tiny_run(tmp_path / "stacked", DPF_TINY)
    assert rows(stacked) == rows(sequential)
    files = sorted(p.relative_to(sequential) for p in sequential.rglob("*.safetensors"))
    assert len(files) >= 3
    for f in files:
        a, b = load_tensors(stacked / f), load_tensors(sequential / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f


def test_dpf_plans_one_feedback_run_on_the_bimp_schedule():
    config = resolve_config({"recipe": "dpf", "train": {"epochs": 10}})
    p = config.pruning
    assert (p.cycles, p.gmp_interval, p.target_sparsity, config.train.swa) == (0, 1, 0.9, False)
    plan = get_recipe("dpf").plan(config, 0, 0, 0)
    assert plan.during == DPFSchedule.bimp(10, 1, 0.9)
    layerwise = resolve_config(
        {
            "recipe": "dpf",
            "train": {"epochs": 10},
            "pruning": {"gmp_interval": 3, "scope": "layerwise"},
        }
    )
    assert get_recipe("dpf").plan(layerwise, 0, 0, 0).during == DPFSchedule.bimp(
        10, 3, 0.9, scope="layerwise"
    )


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"pruning": {"gmp_interval": 0}}, "gmp_interval must be >= 1"),
        ({"pruning": {"gmp_interval": 6}}, "needs train.epochs >= 12"),
        ({"pruning": {"gmp_counts": "bimp"}}, "prunes every mask"),
        ({"pruning": {"pattern": "2:4"}}, "pruning.pattern = '2:4': recipe dpf"),
        ({"pruning": {"gmp_start": 0.2}}, "leave pruning.gmp_start unset"),
        ({"pruning": {"target_sparsity": 0.0}}, "target_sparsity in"),
        ({"pruning": {"rounding": "open_lth"}}, "recipe dpf decides the counts"),
        ({"train": {"swa": True}}, "recipe fixes it to False"),
        ({"pruning": {"cycles": 2}}, "recipe fixes it to 0"),
    ],
)
def test_dpf_options_are_refused_where_they_mean_nothing(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolve_config({"recipe": "dpf", "train": {"epochs": 10}, **values})


def test_dpf_on_your_own_training_loop_gives_the_builtin_run(tmp_path):
    """settings.attach(model, optimizer, steps_per_epoch) under dpf hooks the model's forward
    (w ⊙ m swapped in) and the optimizer's step (the dense w back before it, the mask
    recomputed after every 16th): a plain loop computes the built-in dpf run bit for bit,
    its masked model, mask and rows."""
    from test_own import own_equals_builtin

    own_equals_builtin(tmp_path, DPF_TINY)
