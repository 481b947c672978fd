"""RigL (Evci et al. 2020) in the training loop and as the ``rigl`` recipe, on tiny models with
exact counts (issue 17). Reference: google-research/rigl at d39fc7d, docs/dst-design.md."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine_helpers import (
    final_weights,
    only_run,
    rows,
    same_weights,
    tiny_args,
    tiny_config,
    tiny_run,
    use_executor,
)
from helpers import tiny_net, tiny_split
from sparseavg.cli.main import main
from sparseavg.config import ConfigError
from sparseavg.parallel import Sequential, Stacked
from sparseavg.parallel.base import Work
from sparseavg.parallel.stacked import unstackable
from sparseavg.pruning import Mask, StepMaskSchedule, prunable_parameters
from sparseavg.pruning.rigl import (
    RigLSchedule,
    alive_counts,
    erk_densities,
    random_mask,
    rigl_drop_fraction,
    rigl_interval,
)
from sparseavg.recipes import get_recipe, resolve_config
from sparseavg.recipes.rules import Rewind, SparseStart
from sparseavg.training import TrainSettings, train
from sparseavg.utils.files import load_tensors
from test_dst_recipes import _Checkpoints, _StopAfter

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
    assert RigLSchedule().frequency(290) == 10  # MNIST-1D: 10 epochs of 29 steps, end 218
    assert RigLSchedule().update_steps(290) == list(range(0, 211, 10))
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


# -- the recipe ----------------------------------------------------------------------------------

# tiny MNIST-1D conv1d (width 8): 15 steps an epoch (7,200 samples in batches of 512, the partial
# batch included), 60 in all; end step round(0.75 * 60) = 45, the automatic ΔT 45 // 20 = 2:
# 23 updates at steps 0, 2, ..., 44
RIGL_TINY = {
    "recipe": "rigl",
    "train": {"epochs": 4, "batch_size": 512},
    "pruning": {"cycles": 0, "rewind_epochs": 0.0},
}
# the prunable weights without the first conv (1 x 8 x 5, kept dense): 2 convs of 8 x 8 x 5
# and the 10 x 80 classifier
LAYERS = {"features.3.weight": 320, "features.6.weight": 320, "fc.weight": 800}


def test_rigl_plans_one_run_from_a_seeded_sparse_start():
    config = resolve_config({"recipe": "rigl", "train": {"epochs": 10}})
    p = config.pruning
    assert (p.cycles, p.target_sparsity, p.rewind_epochs, p.exclude_first) == (0, 0.9, 0.0, True)
    assert (p.rigl_distribution, p.rigl_interval, p.rigl_drop_fraction, p.rigl_end) == (
        "erk",
        0,
        0.3,
        0.75,
    )
    plan = get_recipe("rigl").plan(config, 0, 0, 0)
    assert plan.mask == SparseStart(1 - 0.9, "erk", (0, "lineage", 0, "cycle", 0, "rigl"))
    assert plan.during == RigLSchedule(0.3, 0.75, 0)
    assert plan.start == Rewind() and [i.settings.epochs for i in plan.ingredients] == [10]
    uniform = resolve_config(
        {
            "recipe": "rigl",
            "seed": 3,
            "pruning": {
                "rigl_distribution": "uniform",
                "rigl_interval": 7,
                "rigl_drop_fraction": 0.5,
                "rigl_end": 0.5,
                "target_sparsity": 0.8,
            },
        }
    )
    plan = get_recipe("rigl").plan(uniform, 0, 0, 0)
    assert plan.mask == SparseStart(1 - 0.8, "uniform", (3, "lineage", 0, "cycle", 0, "rigl"))
    assert plan.during == RigLSchedule(0.5, 0.5, 7)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"recipe": "rigl", "pruning": {"cycles": 1}}, "recipe fixes it to 0"),
        ({"recipe": "rigl", "pruning": {"target_sparsity": 0.0}}, "target_sparsity in"),
        ({"recipe": "rigl", "pruning": {"pattern": "2:4"}}, "pruning.pattern = '2:4': recipe"),
        ({"recipe": "rigl", "pruning": {"scope": "layerwise"}}, "leave pruning.scope unset"),
        ({"recipe": "rigl", "pruning": {"initial_mask": "m.safetensors"}}, "initial_mask ="),
        ({"recipe": "rigl", "pruning": {"granularity": "channel"}}, "granularity = 'channel'"),
        ({"recipe": "rigl", "train": {"swa": True, "swa_start": 0.5}}, "swa_start >= 0.75"),
        ({"recipe": "rigl", "pruning": {"rigl_distribution": "er2"}}, "'er2' is not one of"),
        ({"recipe": "rigl", "pruning": {"rigl_end": 0.0}}, "rigl_end"),
        ({"recipe": "gmp", "pruning": {"rigl_interval": 5}}, "recipe gmp has none"),
        ({"recipe": "imp", "pruning": {"rigl_distribution": "uniform"}}, "rigl_distribution sets"),
    ],
)
def test_rigl_options_are_refused_where_they_mean_nothing(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolve_config(values)
    assert resolve_config(
        {"recipe": "rigl", "train": {"swa": True, "swa_start": 0.75}}
    ).train.swa  # SWA once the mask is fixed is fine


class _Updates:
    """Notes every step at which a RigLSchedule updated the mask."""

    def __init__(self, monkeypatch) -> None:
        self.steps: list[tuple[int, int, int]] = []
        real = RigLSchedule.update_step
        notes = self

        def spy(schedule, step, steps_per_epoch, total_steps, *args):
            notes.steps.append((step, steps_per_epoch, total_steps))
            return real(schedule, step, steps_per_epoch, total_steps, *args)

        monkeypatch.setattr(RigLSchedule, "update_step", spy)


def test_rigl_run_keeps_each_layers_alive_count_and_zeros_through_every_epoch(
    tmp_path, monkeypatch
):
    """The ERK start by hand: raw (sum shape / prod shape) 21/320, 21/320, 90/800; eps =
    144 / 132 so the layers hold 32 + 32 + 80 = 144 alive; each layer N - floor((1 - eps p) N)
    = 23, 23, 99 (145: one more than 10 % of 1440, rigl's flooring). Every epoch checkpoint
    keeps those counts, with pruned weights and their momentum exactly 0."""
    updates = _Updates(monkeypatch)
    notes = _Checkpoints(monkeypatch)
    run = tiny_run(tmp_path, RIGL_TINY)
    assert updates.steps == [(s, 15, 60) for s in range(0, 45, 2)]
    assert RigLSchedule().update_steps(60) == list(range(0, 45, 2))  # 23 updates
    expected = {"features.3.weight": 23, "features.6.weight": 23, "fc.weight": 99}
    masks = [n["mask"] for n in notes.seen]
    assert [n["step"] for n in notes.seen] == [15, 30, 45, 60]
    assert masks[0] != masks[1] != masks[2]  # the mask moved in each of the first 3 epochs
    assert masks[2] == masks[3]  # and not after the end step (its drop fraction is 0)
    for n in notes.seen:
        assert {name: int(m.sum()) for name, m in n["mask"].items()} == expected
        assert {name: m.numel() for name, m in n["mask"].items()} == LAYERS
        for name, keep in n["mask"].items():
            assert not n["model"][name][~keep].any(), (n["step"], name)
            assert not n["momentum"][name][~keep].any(), (n["step"], name)
    start = SparseStart(0.1, "erk", (0, "lineage", 0, "cycle", 0, "rigl"))
    first = start(0, _Dense(_SHAPES))
    assert {name: int(m.sum()) for name, m in first.items()} == expected
    assert first != masks[0]  # 8 updates moved it in epoch 0
    final = Mask.load(run / "cycle_00" / "mask.safetensors")
    assert final == masks[-1]
    [row] = rows(run)
    assert (row["role"], row["alive"], row["total"], row["headline"]) == (
        "combined",
        145,
        1440,
        True,
    )
    combined = load_tensors(run / "cycle_00" / "combined.safetensors")
    assert sum(int(combined[name].ne(0).sum()) for name in final) <= 145
    assert all(not combined[name][~keep].any() for name, keep in final.items())
    assert combined["features.0.weight"].ne(0).all()  # the first layer trained dense


_SHAPES = {"features.3.weight": (8, 8, 5), "features.6.weight": (8, 8, 5), "fc.weight": (10, 80)}


class _Dense:
    """MaskSources with only the dense mask of ``shapes``."""

    def __init__(self, shapes):
        self.mask = Mask({name: torch.ones(s, dtype=torch.bool) for name, s in shapes.items()})

    def dense(self):
        return self.mask


def test_rigl_resumed_mid_run_equals_an_uninterrupted_run(tmp_path):
    """Interrupted in epoch 2 (after the checkpoint of epoch 1, whose mask differs from the
    start's), then resumed: the same rows, mask and weights, bit for bit."""
    from sparseavg.experiment import run

    config = tiny_config(RIGL_TINY)
    reference = run(config, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "b", _StopAfter(20))
    [checkpoint] = (tmp_path / "b").rglob("checkpoint.pt")
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 15  # the checkpoint of epoch 0, with the mask 8 updates made
    start = SparseStart(0.1, "erk", (0, "lineage", 0, "cycle", 0, "rigl"))
    assert Mask(state["mask"]) != start(0, _Dense(_SHAPES))
    resumed = run(config, tmp_path / "b")
    assert rows(resumed) == rows(reference)
    assert same_weights(final_weights(resumed), final_weights(reference))
    a = Mask.load(resumed / "cycle_00" / "mask.safetensors")
    assert a == Mask.load(reference / "cycle_00" / "mask.safetensors")


def test_rigl_under_the_stacked_executor_equals_sequential(tmp_path, monkeypatch):
    """One model: the stacked executor trains it as sequential does (nothing to stack, no
    message), bit for bit; with several jobs it would fall back, naming the mask schedule."""

    use_executor(monkeypatch, Sequential())
    sequential = tiny_run(tmp_path / "sequential", RIGL_TINY)
    use_executor(monkeypatch, Stacked())
    stacked = tiny_run(tmp_path / "stacked", RIGL_TINY)
    assert rows(stacked) == rows(sequential)
    files = sorted(p.relative_to(sequential) for p in sequential.rglob("*.safetensors"))
    assert len(files) >= 3
    for f in files:
        a, b = load_tensors(stacked / f), load_tensors(sequential / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    config = tiny_config(RIGL_TINY)
    work = Work(0, 0, {}, 0, Mask({}), get_recipe("rigl").plan(config, 0, 0, 0).during)
    assert unstackable(nn.Linear(2, 2), work, []) == (
        "a mask schedule changes the mask during training"
    )


def test_rigl_runs_from_the_cli_with_uniform_layers(tmp_path, capsys):
    """Uniform: every layer N - floor(0.9 N) alive: 32, 32, 80."""
    args = tiny_args("rigl", tmp_path, "--set", 'pruning.rigl_distribution="uniform"', cycles=None)
    assert main([*args, "--set", "pruning.rewind_epochs=0.0"]) == 0
    run = only_run(tmp_path)
    mask = Mask.load(run / "cycle_00" / "mask.safetensors")
    assert {name: int(m.sum()) for name, m in mask.items()} == {
        "features.3.weight": 32,
        "features.6.weight": 32,
        "fc.weight": 80,
    }
    [row] = rows(run)
    assert (row["alive"], row["total"], row["sparsity"]) == (144, 1440, 0.9)
    assert str(run) in capsys.readouterr().out


def test_rigl_on_your_own_training_loop_gives_the_builtin_run(tmp_path):
    """A plain loop (the built-in one's batches, learning rate, SGD and zero_grad) that keeps
    the mask with settings.attach(model, optimizer, steps_per_epoch) gets rigl's drop and grow
    from the optimizer's step hooks (an update step undone: no update on that batch) and
    computes the built-in rigl run bit for bit: rows, mask and model."""
    from test_own import own_equals_builtin

    own_equals_builtin(tmp_path, RIGL_TINY)


def test_rigl_on_your_own_loop_without_steps_per_epoch_is_refused(tmp_path):
    """rigl's updates are placed by optimizer steps: a loop that attaches without the step
    count, or with plain sparseavg.attach, stops with a line that names the fix."""
    import sparseavg
    from test_own import OWN, PRUNABLE, TiedLM, accuracy, loop

    config = {**OWN, "pruning": {"rewind_epochs": 0.0, "target_sparsity": 0.5, "cycles": 0}}

    def no_count(model, mask, seed, settings):
        settings.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))

    with pytest.raises(ValueError, match="pass steps_per_epoch"):
        sparseavg.prune(
            "rigl", TiedLM, no_count, accuracy, runs_dir=tmp_path / "a", config=config,
            prunable=PRUNABLE, progress=False,
        )  # fmt: skip
    with pytest.raises(
        RuntimeError, match=r"settings\.attach\(model, optimizer, steps_per_epoch\)"
    ):
        sparseavg.prune(
            "rigl", TiedLM, loop, accuracy, runs_dir=tmp_path / "b", config=config,
            prunable=PRUNABLE, progress=False,
        )  # fmt: skip
