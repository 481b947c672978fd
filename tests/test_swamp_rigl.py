"""swamp-rigl: SWAMP's particles on RigL (issue 17), on tiny models with exact counts.

Two readings (docs/recipes.md), chosen by ``pruning.rigl_decide``. ``average`` (the default):
the particles start from one initialisation and one random ERK mask and train in lock step;
every drop/grow decision is taken once on their mean weights and mean dense gradient and
written into all of them, so they share one mask throughout, and are averaged at the end.
``each``: every particle runs RigL's drop and grow on its own, and at the end their moved masks
are settled on the mask of their average with every layer's alive count kept; the particles
are projected on that mask and averaged."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

from engine_helpers import final_weights, rows, same_weights, tiny_config, tiny_run, use_executor
from helpers import tiny_net, tiny_split
from sparseavg.config import ConfigError
from sparseavg.parallel import Stacked
from sparseavg.parallel.base import Work
from sparseavg.parallel.stacked import unstackable
from sparseavg.pruning import Lockstep, Mask, prunable_parameters
from sparseavg.pruning.rigl import RigLSchedule
from sparseavg.recipes import get_recipe
from sparseavg.recipes.rules import AverageMaskPerLayer
from sparseavg.training import TrainSettings, train
from sparseavg.utils.files import load_tensors
from sparseavg.utils.seeding import make_generator
from test_dst_recipes import _StopAfter

pytestmark = pytest.mark.usefixtures("one_thread")

SWAMP_RIGL_TINY = {
    "recipe": "swamp-rigl",
    "train": {"epochs": 4, "batch_size": 512},
    "pruning": {"cycles": 0, "rewind_epochs": 0.0},
    "ingredients": {"count": 2},
}
# the reading in which each particle decides on its own
EACH_TINY = {
    **SWAMP_RIGL_TINY,
    "pruning": {"cycles": 0, "rewind_epochs": 0.0, "rigl_decide": "each"},
}
# rigl's ERK counts on the tiny conv1d at 90 % (test_rigl_recipe.py derives them by hand)
ERK_ALIVE = {"features.3.weight": 23, "features.6.weight": 23, "fc.weight": 99}


def test_the_settle_keeps_each_layers_count_and_its_largest_averages():
    """Layer a: masks {0,1} and {1,2}, 2 alive each; the average of the masked weights is
    (1.5, 3, 2.5, 0): keep indices 1 and 2. Layer b: 1 alive; averages (-4, 1): keep 0."""
    masks = [
        Mask({"a": torch.tensor([1, 1, 0, 0]).bool(), "b": torch.tensor([1, 0]).bool()}),
        Mask({"a": torch.tensor([0, 1, 1, 0]).bool(), "b": torch.tensor([0, 1]).bool()}),
    ]
    states = [
        {"a": torch.tensor([3.0, 2.0, 0.0, 0.0]), "b": torch.tensor([-8.0, 0.0])},
        {"a": torch.tensor([0.0, 4.0, 5.0, 0.0]), "b": torch.tensor([0.0, 2.0])},
    ]
    settled, projected = AverageMaskPerLayer()(states, masks, [None, None])
    assert settled["a"].tolist() == [False, True, True, False]
    assert settled["b"].tolist() == [True, False]
    assert [p["a"].tolist() for p in projected] == [[0.0, 2.0, 0.0, 0.0], [0.0, 4.0, 5.0, 0.0]]


def test_particles_move_their_own_masks_and_the_average_keeps_the_settled_one(tmp_path):
    """rigl_decide = each. Two particles from one ERK start: each keeps 23/23/99 alive and ends
    with a mask of its own; the run's mask keeps those counts and the combined model is exactly
    the mean of the particles projected on it."""
    run = tiny_run(tmp_path, EACH_TINY)
    cycle = run / "cycle_00"
    moved = [Mask.load(cycle / f"ingredient_{k}" / "mask.safetensors") for k in (0, 1)]
    assert moved[0] != moved[1]  # different batch orders moved them differently
    for m in moved:
        assert {n: int(t.sum()) for n, t in m.items()} == ERK_ALIVE
    mask = Mask.load(cycle / "mask.safetensors")
    assert {n: int(t.sum()) for n, t in mask.items()} == ERK_ALIVE
    assert mask != moved[0] and mask != moved[1]
    finals = [load_tensors(cycle / f"ingredient_{k}" / "final.safetensors") for k in (0, 1)]
    combined = load_tensors(cycle / "combined.safetensors")
    for name, keep in mask.items():
        expected = (finals[0][name] * keep + finals[1][name] * keep) / 2
        assert torch.equal(combined[name], expected), name
        assert not combined[name][~keep].any()
    headline = [r for r in rows(run) if r["headline"]]
    assert [(r["role"], r["alive"], r["total"]) for r in headline] == [("combined", 145, 1440)]
    assert [r["ingredient"] for r in rows(run) if r["role"] == "ingredient"] == [0, 1]


@pytest.mark.parametrize("values", [EACH_TINY, SWAMP_RIGL_TINY], ids=["each", "average"])
def test_swamp_rigl_resumed_mid_run_equals_an_uninterrupted_run(tmp_path, values):
    """Stopped inside the third of 4 epochs that both particles train together (15 steps an
    epoch), after the particles took their own batches (rigl_together 0.5: from step 30)."""
    from sparseavg.experiment import run

    config = tiny_config(values)
    reference = run(config, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "b", _StopAfter(40))
    assert list((tmp_path / "b").rglob("ingredient_1/checkpoint.pt"))
    resumed = run(config, tmp_path / "b")
    assert rows(resumed) == rows(reference)
    assert same_weights(final_weights(resumed), final_weights(reference))


def test_swamp_rigl_falls_back_from_stacking_and_refuses_what_rigl_refuses(tmp_path):
    config = tiny_config(EACH_TINY)
    plan = get_recipe("swamp-rigl").plan(config, 0, 0, 0)
    assert isinstance(plan.settle, AverageMaskPerLayer)
    work = Work(0, 0, {}, 0, Mask({}), plan.during)
    assert unstackable(nn.Linear(2, 2), work, []) == (
        "a mask schedule changes the mask during training"
    )
    with pytest.raises(ConfigError, match="recipe swamp-rigl draws its own random sparse"):
        tiny_config({**SWAMP_RIGL_TINY, "pruning": {"cycles": 0, "scope": "layerwise"}})
    with pytest.raises(ConfigError, match="while recipe swamp-rigl still moves the mask"):
        tiny_config({**SWAMP_RIGL_TINY, "train": {"epochs": 4, "swa_start": 0.5}})


def test_swamp_rigl_on_your_own_training_loop_is_refused(tmp_path):
    import sparseavg
    from test_own import OWN, PRUNABLE, TiedLM, accuracy, loop

    config = {**OWN, "pruning": {"rewind_epochs": 0.0, "target_sparsity": 0.5}}
    with pytest.raises(ConfigError, match="recipe 'swamp-rigl' changes the mask inside"):
        sparseavg.prune(
            "swamp-rigl", TiedLM, loop, accuracy, runs_dir=tmp_path, config=config,
            prunable=PRUNABLE, progress=False,
        )  # fmt: skip
    assert not list(tmp_path.iterdir())


# -- rigl_decide = average: the particles in lock step -------------------------------------------


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _lockstep(seeds, on_epoch_end=None, resume=None, schedule=None, **options):
    """TinyConvNet particles from one ERK start (test_rigl_recipe's), trained together for
    2 epochs of 10 steps, RigL every 3 steps until step 15."""
    from sparseavg.training import train_together
    from test_rigl_recipe import SETTINGS, _sparse_net

    models, masks = zip(*(_sparse_net() for _ in seeds), strict=True)
    schedule = schedule or Lockstep(RigLSchedule(interval=3))
    results = train_together(
        list(models),
        tiny_split(n=80),
        [SETTINGS] * len(seeds),
        seeds=list(seeds),
        mask=masks[0],
        mask_schedule=schedule,
        resume=resume,
        on_epoch_end=on_epoch_end,
        **options,
    )
    return results, masks[0]


def test_one_particle_in_lock_step_is_rigl_in_train_bit_for_bit():
    from test_rigl_recipe import _run

    alone, _, _ = _run()
    (together,), _ = _lockstep([0])
    assert _equal(together.state, alone.state)
    assert together.mask == alone.mask and together.steps == alone.steps == 20
    assert together.losses == alone.losses
    assert [(e.epoch, e.step, e.loss, e.accuracy, e.lr) for e in together.history] == [
        (e.epoch, e.step, e.loss, e.accuracy, e.lr) for e in alone.history
    ]


def test_particles_share_every_update_taken_on_their_mean_weights_and_gradients():
    """Two particles (seeds 0 and 1). Step 0 updates first: both are at the start, so the
    update sees the start weights and the mean of the two particles' gradients on their own
    first batches; every later update sees their mean weights. Both end under one mask with
    rigl's per-layer counts (17 and 386 alive), pruned weights exactly 0, different weights."""
    from test_rigl_recipe import SETTINGS, _sparse_net, _Spy

    spy = _Spy(RigLSchedule(interval=3))
    (a, b), start_mask = _lockstep([0, 1], schedule=Lockstep(spy))
    assert [c["step"] for c in spy.calls] == [0, 3, 6, 9, 12, 15]

    start, _ = _sparse_net()
    data = tiny_split(n=80)
    gradients = []
    for seed in (0, 1):
        model, _ = _sparse_net()
        x, y = next(iter(data.batches(8, generator=make_generator(seed, "epoch", 0))))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        gradients.append({n: p.grad for n, p in model.named_parameters()})
    first = spy.calls[0]
    for name in start_mask:
        assert torch.equal(first["weights"][name], dict(start.named_parameters())[name].detach())
        mean = ((gradients[0][name].double() + gradients[1][name].double()) / 2).float()
        assert torch.equal(first["gradients"][name], mean), name
    assert SETTINGS.epochs == 2

    assert a.mask == b.mask == spy.calls[-1]["new"]
    assert {n: int(t.sum()) for n, t in a.mask.items()} == {"conv.weight": 17, "fc.weight": 386}
    for call in spy.calls:
        assert {n: int(t.sum()) for n, t in call["new"].items()} == {
            n: int(t.sum()) for n, t in start_mask.items()
        }
    for result in (a, b):
        for name, keep in a.mask.items():
            assert not result.state[name][~keep].any(), name
    assert not torch.equal(a.state["fc.weight"], b.state["fc.weight"])
    # alone, particle 0 decides on its own weights and gradients and ends elsewhere
    from test_rigl_recipe import _run

    alone, _, _ = _run()
    assert alone.mask != a.mask


def test_particles_in_lock_step_resume_at_an_epoch_boundary_bit_for_bit():
    checkpoints: list[tuple[int, object]] = []
    reference, _ = _lockstep([0, 1], on_epoch_end=lambda i, s: checkpoints.append((i, s)))
    assert [(i, s.step) for i, s in checkpoints] == [(0, 10), (1, 10), (0, 20), (1, 20)]
    assert Mask(checkpoints[0][1].mask) == Mask(checkpoints[1][1].mask)
    resumed, _ = _lockstep([0, 1], resume=[checkpoints[0][1], checkpoints[1][1]])
    for r, ref in zip(resumed, reference, strict=True):
        assert _equal(r.state, ref.state) and r.mask == ref.mask
        assert r.losses == ref.losses
    with pytest.raises(ValueError, match="resume at one step, got steps \\[10, 20\\]"):
        _lockstep([0, 1], resume=[checkpoints[0][1], checkpoints[3][1]])


def test_lock_step_refuses_settings_that_do_not_line_up():
    from sparseavg.training import train_together
    from test_rigl_recipe import SETTINGS

    longer = dataclasses.replace(SETTINGS, epochs=3)
    models = [tiny_net(0), tiny_net(0)]
    with pytest.raises(ValueError, match="must share epochs, got \\[2, 3\\]"):
        train_together(
            models, tiny_split(n=80), [SETTINGS, longer], seeds=[0, 1],
            mask=Mask.ones_like(prunable_parameters(models[0])),
            mask_schedule=RigLSchedule(),
        )  # fmt: skip


def test_swamp_rigl_particles_share_one_mask_and_average_to_the_combined_model(tmp_path):
    """The default reading: both particles' saved masks are the run's mask, with ERK's
    23/23/99 alive, and the combined model is exactly the mean of the particles."""
    config = tiny_config(SWAMP_RIGL_TINY)
    plan = get_recipe("swamp-rigl").plan(config, 0, 0, 0)
    assert isinstance(plan.during, Lockstep) and plan.settle is None
    run = tiny_run(tmp_path, SWAMP_RIGL_TINY)
    cycle = run / "cycle_00"
    mask = Mask.load(cycle / "mask.safetensors")
    for k in (0, 1):
        assert Mask.load(cycle / f"ingredient_{k}" / "mask.safetensors") == mask
    assert {n: int(t.sum()) for n, t in mask.items()} == ERK_ALIVE
    finals = [load_tensors(cycle / f"ingredient_{k}" / "final.safetensors") for k in (0, 1)]
    assert not torch.equal(finals[0]["fc.weight"], finals[1]["fc.weight"])
    combined = load_tensors(cycle / "combined.safetensors")
    for name, keep in mask.items():
        # uniform_average's running mean: f0 + (f1 - f0) / 2
        assert torch.equal(combined[name], torch.lerp(finals[0][name], finals[1][name], 0.5))
        assert not combined[name][~keep].any()
    headline = [r for r in rows(run) if r["headline"]]
    assert [(r["role"], r["alive"], r["total"]) for r in headline] == [("combined", 145, 1440)]


def test_swamp_rigl_in_lock_step_under_the_stacked_executor_equals_sequential(
    tmp_path, monkeypatch
):
    messages: list[str] = []
    sequential = tiny_run(tmp_path / "a", SWAMP_RIGL_TINY)
    use_executor(monkeypatch, Stacked())
    from sparseavg.experiment import run

    class _Say(_StopAfter):
        def message(self, text):
            messages.append(text)

    stacked = run(tiny_config(SWAMP_RIGL_TINY), tmp_path / "b", _Say(10**9))
    assert rows(stacked) == rows(sequential)
    assert same_weights(final_weights(stacked), final_weights(sequential))
    note = "stacked: these ingredients train in lock step (one step each in turn); training"
    assert f"{note} them together here" in messages


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (
            {**SWAMP_RIGL_TINY, "execution": {"mode": "distributed"}},
            "recipe swamp-rigl trains them in lock step in one process",
        ),
        (
            {"recipe": "rigl", "pruning": {"cycles": 0, "rigl_decide": "average"}},
            "recipe rigl trains one model: leave it unset",
        ),
        (
            {"recipe": "imp", "pruning": {"rigl_decide": "average"}},
            "pruning.rigl_decide sets recipe rigl's schedule; recipe imp has none",
        ),
        (
            {"recipe": "rigl", "pruning": {"cycles": 0, "rigl_together": 0.5}},
            "recipe rigl trains one model: leave it unset",
        ),
        (
            {**SWAMP_RIGL_TINY, "pruning": {"cycles": 0, "rigl_together": 1.0}},
            "pruning.rigl_together",
        ),
    ],
    ids=["distributed", "rigl", "imp", "together-rigl", "together-1"],
)
def test_rigl_decide_is_refused_where_it_cannot_hold(values, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        tiny_config(values)


def test_particles_that_decide_each_on_their_own_are_each_rigl_in_train():
    """shared = False (rigl_decide = each): in lock step every particle is exactly the RigL
    run train() gives it alone, so the reading's runs from before the lock step still hold."""
    from test_rigl_recipe import SETTINGS, _sparse_net

    together, _ = _lockstep([0, 1], shared=False)
    for seed, result in zip((0, 1), together, strict=True):
        model, mask = _sparse_net()
        alone = train(
            model, tiny_split(n=80), SETTINGS, seed=seed, mask=mask,
            mask_schedule=RigLSchedule(interval=3),
        )  # fmt: skip
        assert _equal(result.state, alone.state) and result.mask == alone.mask
    assert together[0].mask != together[1].mask


def test_particles_train_as_one_for_the_shared_steps_then_take_their_own_batches():
    """shared_steps = 10 (the first epoch of 10 steps): particle 1 takes particle 0's batches,
    so both checkpoints after epoch 0 are the same bit for bit; in epoch 1 it takes its own
    order: with shared = False its run is train() resumed from that checkpoint with seed 1."""
    from test_rigl_recipe import SETTINGS, _sparse_net

    checkpoints = []
    (a, b), _ = _lockstep(
        [0, 1], shared=False, shared_steps=10, on_epoch_end=lambda i, s: checkpoints.append(s)
    )
    first, second = checkpoints[0], checkpoints[1]
    assert first.step == second.step == 10 and _equal(first.model, second.model)
    model, mask = _sparse_net()
    resumed = train(
        model, tiny_split(n=80), SETTINGS, seed=1, mask=mask,
        mask_schedule=RigLSchedule(interval=3), resume=second,
    )  # fmt: skip
    assert _equal(b.state, resumed.state) and b.mask == resumed.mask
    assert not _equal(a.state, b.state)


def test_an_epoch_split_inside_takes_the_shared_batches_then_its_own():
    from sparseavg.training.lockstep import _epoch_batches

    data = tiny_split(n=80)

    class _M:
        seed = 1
        settings = TrainSettings(epochs=2, batch_size=8)

    def order(seed):
        return [x for x, _ in data.batches(8, generator=make_generator(seed, "epoch", 1))]

    got = [x for x, _ in _epoch_batches(data, _M(), 0, epoch=1, offset=2, shared=6)]
    expected = order(0)[2:6] + order(1)[6:]
    assert len(got) == 8 and all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
    got = [x for x, _ in _epoch_batches(data, _M(), 0, epoch=1, offset=7, shared=6)]
    assert all(torch.equal(g, e) for g, e in zip(got, order(1)[7:], strict=True))


def test_swamp_rigl_plans_the_lock_step_from_its_options():
    config = tiny_config(SWAMP_RIGL_TINY)
    assert config.pruning.rigl_together == 0.5
    plan = get_recipe("swamp-rigl").plan(config, 0, 0, 0)
    assert plan.during == Lockstep(RigLSchedule(0.3, 0.75, 0), 0.5, True)
    each = get_recipe("swamp-rigl").plan(tiny_config(EACH_TINY), 0, 0, 0)
    assert each.during == Lockstep(RigLSchedule(0.3, 0.75, 0), 0.5, False)
    assert Lockstep(RigLSchedule(), 0.5).together_steps(57) == 28  # round(28.5), to even


def test_alike_particles_train_one_model_until_they_part_with_the_same_result(monkeypatch):
    """Until shared_steps = 15 (inside epoch 1) alike particles are one model: only the first
    runs forwards (15 of them, the second none), the second takes its state at step 15 and
    both end exactly as when every particle computes every step."""
    import sparseavg.training.lockstep as lockstep

    forwards = [0, 0]
    original = lockstep._forward_backward

    def counted(mb, step, total, device):
        if id(mb.model) in members:
            forwards[members.index(id(mb.model))] += step < 15
        original(mb, step, total, device)

    from test_rigl_recipe import SETTINGS, _sparse_net

    models = [_sparse_net()[0] for _ in range(2)]
    members = [id(m) for m in models]
    monkeypatch.setattr(lockstep, "_forward_backward", counted)
    fast = lockstep.train_together(
        models, tiny_split(n=80), [SETTINGS] * 2, seeds=[0, 1], mask=_sparse_net()[1],
        mask_schedule=Lockstep(RigLSchedule(interval=3)), shared_steps=15,
    )  # fmt: skip
    assert forwards == [15, 0]
    monkeypatch.setattr(lockstep, "_alike", lambda *args: False)
    slow, _ = _lockstep([0, 1], shared_steps=15)
    for a, b in zip(fast, slow, strict=True):
        assert _equal(a.state, b.state) and a.mask == b.mask and a.losses == b.losses
    assert not _equal(fast[0].state, fast[1].state)
