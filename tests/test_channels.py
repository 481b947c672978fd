"""Channel masks (``pruning.granularity = "channel"``): zeros in whole rows and the coupled
input columns, exact channel counts, every recipe family unchanged, and what is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine_helpers import only_run, tiny_args
from sparseavg.averaging import uniform_average
from sparseavg.cli.main import main
from sparseavg.config import ConfigError
from sparseavg.pruning import Mask, prunable_parameters
from sparseavg.pruning.channels import (
    ChannelGradualPruning,
    alive_channels,
    channel_groups,
    channel_prune,
    channel_prune_to,
    channel_scores,
    random_channel_prune,
    remove_channels,
)
from sparseavg.recipes import resolve_config
from sparseavg.utils.files import load_tensors


@pytest.fixture
def torch_pruning():
    """Skips a test when the optional torch-pruning package is missing."""
    return pytest.importorskip("torch_pruning")


needs_tp = pytest.mark.usefixtures("torch_pruning")


class TwoLayer(nn.Module):
    """Linear(3, 4) - ReLU - Linear(4, 2): one group of 4 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class TinyRes(nn.Module):
    """stem conv(1->4)+BN, a residual block conv(4->3)+BN, conv(3->4)+BN added to the stem,
    pooled, Linear(4, 2): groups {stem, block conv2 rows, block conv1 and fc columns} (4) and
    {block conv1 rows, its BN, conv2 columns} (3)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.bn0(self.stem(x)))
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(s)))))
        out = torch.relu(out + s)
        return self.fc(out.mean(dim=(2, 3)))


def _setup(model: nn.Module, example: torch.Tensor):
    weights = prunable_parameters(model)
    groups = channel_groups(model, example, list(weights))
    return {n: w.detach() for n, w in weights.items()}, Mask.ones_like(weights), groups


@needs_tp
def test_two_layer_prunes_the_rows_and_the_next_layers_columns():
    torch.manual_seed(0)
    model = TwoLayer()
    with torch.no_grad():  # row i of fc1 scaled by (i+1): channel scores grow with i
        model.fc1.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None] * torch.ones(4, 3))
        model.fc2.weight.fill_(1.0)
    weights, mask, groups = _setup(model, torch.zeros(2, 3))
    assert [(g.root, g.channels) for g in groups] == [("fc1", 4)]
    assert [(m.name, m.dim) for m in groups[0].members] == [
        ("fc1.weight", 0),
        ("fc1.bias", 0),
        ("fc2.weight", 1),
    ]
    # scores: mean |w| over the row (3 weights) and the column (2 weights) = (3c + 2) / 5
    assert channel_scores(weights, mask, groups)[0].tolist() == pytest.approx([1.0, 1.6, 2.2, 2.8])
    new = channel_prune(weights, mask, groups, 0.5)
    assert new["fc1.weight"].all(dim=1).tolist() == [False, False, True, True]
    assert not new["fc1.weight"][:2].any()
    assert new["fc2.weight"].tolist() == [[False, False, True, True]] * 2
    assert new.num_alive == 12 - 6 + 8 - 4


@needs_tp
def test_l1_and_l2_rank_differently():
    model = TwoLayer()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[3.0, 0, 0], [1, 1, 1], [5, 5, 5], [5, 5, 5]]))
        model.fc2.weight.zero_()
    weights, mask, groups = _setup(model, torch.zeros(2, 3))
    # channel 0: |w| mean 3/5 = 0.6, rms sqrt(9/5) = 1.34; channel 1: 3/5 = 0.6, sqrt(3/5) = 0.77
    l1 = channel_prune(weights, mask, groups, 0.25, norm="l1")  # tie: the first channel goes
    l2 = channel_prune(weights, mask, groups, 0.25, norm="l2")
    assert alive_channels(l1, groups)[0].tolist() == [False, True, True, True]
    assert alive_channels(l2, groups)[0].tolist() == [True, False, True, True]


@needs_tp
def test_residual_block_prunes_its_coupled_group_together():
    torch.manual_seed(0)
    model = TinyRes()
    _, mask, groups = _setup(model, torch.zeros(2, 1, 6, 6))
    by_root = {g.root: g for g in groups}
    assert sorted(by_root) == ["conv1", "stem"]
    stream = {(m.name, m.dim) for m in by_root["stem"].members}
    assert stream == {
        ("stem.weight", 0),
        ("bn0.weight", 0),
        ("bn0.bias", 0),
        ("conv1.weight", 1),
        ("conv2.weight", 0),
        ("bn2.weight", 0),
        ("bn2.bias", 0),
        ("fc.weight", 1),
    }
    # remove stream channel 2 by hand: every covered member loses it, nothing else changes
    new = remove_channels(mask, groups, [{2} if g.root == "stem" else set() for g in groups])
    assert not new["stem.weight"][2].any() and new["stem.weight"][[0, 1, 3]].all()
    assert not new["conv2.weight"][2].any() and new["conv2.weight"][[0, 1, 3]].all()
    assert not new["conv1.weight"][:, 2].any() and new["conv1.weight"][:, [0, 1, 3]].all()
    assert new["fc.weight"].tolist() == [[True, True, False, True]] * 2
    assert set(new) == set(mask)  # BatchNorm stays out of the mask
    # stem's row (1 x 3 x 3), conv2's row (3 x 3 x 3), conv1's column (3 x 3 x 3), fc's column
    assert new.num_pruned == 9 + 27 + 27 + 2


@needs_tp
def test_counts_are_exact_global_and_layerwise_never_the_last_channel():
    torch.manual_seed(0)
    model = TinyRes()  # groups of 4 (stream) and 3 (block) channels
    weights, mask, groups = _setup(model, torch.zeros(2, 1, 6, 6))

    def alive(m: Mask) -> list[int]:
        return [int(a.sum()) for a in alive_channels(m, groups)]

    assert alive(mask) == [3, 4] or alive(mask) == [4, 3]
    order = [g.channels for g in groups]
    step = channel_prune(weights, mask, groups, 0.5, scope="global")  # round(3.5) = 4 go
    assert sum(alive(step)) == 3
    step = channel_prune(weights, mask, groups, 0.5, scope="layerwise")  # 2 of 4, 2 of 3
    assert alive(step) == [c - round(0.5 * c) for c in order]
    # a global count that would empty a group leaves its last channel
    step = channel_prune(weights, mask, groups, 0.9, scope="global")  # round(6.3) = 6 asked
    assert alive(step) == [1, 1]
    # prune to a channel sparsity: round(0.5 * 7) = 4 pruned, those already pruned count
    to = channel_prune_to(weights, mask, groups, 0.5)
    assert sum(alive(to)) == 3
    assert channel_prune_to(weights, to, groups, 0.5) == to


@needs_tp
def test_random_channels_remove_magnitudes_counts_whole_and_by_the_seed():
    """The random-channel baseline removes as many channels as channel_prune (globally 4 of 7
    at 0.5, per group round(0.5 c)), whole (rows and the coupled columns); one seed gives the
    same channels, and the 8 seeds tried give more than one choice."""
    from sparseavg.utils.seeding import make_generator

    torch.manual_seed(0)
    model = TinyRes()
    weights, mask, groups = _setup(model, torch.zeros(2, 1, 6, 6))

    def alive(m: Mask) -> list[int]:
        return [int(a.sum()) for a in alive_channels(m, groups)]

    for scope in ("global", "layerwise"):
        by_norm = channel_prune(weights, mask, groups, 0.5, scope=scope)
        draws = [
            random_channel_prune(mask, groups, 0.5, generator=make_generator(s), scope=scope)
            for s in range(8)
        ]
        for m in draws:
            if scope == "layerwise":
                assert alive(m) == alive(by_norm)
            assert sum(alive(m)) == sum(alive(by_norm)) == 3  # 7 - round(3.5); (4-2) + (3-2)
            _whole(m, groups)
        assert len({tuple(tuple(a.tolist()) for a in alive_channels(m, groups)) for m in draws}) > 1
        again = random_channel_prune(mask, groups, 0.5, generator=make_generator(3), scope=scope)
        assert again == draws[3]


@needs_tp
def test_first_layers_inputs_and_output_rows_are_never_pruned():
    torch.manual_seed(0)
    model = TinyRes()
    weights, mask, groups = _setup(model, torch.zeros(2, 1, 6, 6))
    new = channel_prune(weights, mask, groups, 0.9, scope="layerwise")
    assert new["fc.weight"].any(dim=1).all()  # both classes keep a row
    alive_rows = new["stem.weight"].flatten(1).any(dim=1)
    assert new["stem.weight"][alive_rows].all()  # an alive filter keeps its input channel


@needs_tp
def test_average_of_models_sharing_a_channel_mask_keeps_it():
    torch.manual_seed(0)
    model = TinyRes()
    weights, mask, groups = _setup(model, torch.zeros(2, 1, 6, 6))
    new = channel_prune(weights, mask, groups, 0.5)
    states = []
    for seed in range(3):
        torch.manual_seed(seed)
        state = {
            k: torch.randn_like(v) if v.is_floating_point() else v
            for k, v in TinyRes().state_dict().items()
        }
        states.append(new.applied(state))
    avg = uniform_average(states)
    assert Mask.from_weights({n: avg[n] for n in new}) == new


@needs_tp
def test_gradual_channel_schedule_reaches_its_target():
    torch.manual_seed(0)
    model = TinyRes()
    weights, mask, groups = _setup(model, torch.zeros(2, 1, 6, 6))
    schedule = ChannelGradualPruning(0, 2, 0.5, groups=groups)
    first = schedule.update(1, weights, None, mask)  # cubic: 0.5 * (1 - 1/8) = 0.4375 -> 3
    assert first is not None and sum(int(a.sum()) for a in alive_channels(first, groups)) == 4
    second = schedule.update(2, weights, None, first)  # 0.5 -> round(3.5) = 4
    assert second is not None and sum(int(a.sum()) for a in alive_channels(second, groups)) == 3
    assert schedule.update(3, weights, None, second) is None


# -- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pruning", "fragment"),
    [
        ({"pattern": "2:4"}, "pruning.pattern = '2:4' keeps N of every M weights: choose one"),
        ({"method": "shuffle"}, "pruning.method = 'shuffle' places single weights"),
        ({"layer_fractions": {"fc.weight": 0.1}}, "pruning.layer_fractions sets"),
        ({"rounding": "open_lth"}, "pruning.rounding = 'open_lth' counts single weights"),
    ],
)
def test_channel_granularity_refuses_weight_options_in_one_line(pruning, fragment):
    with pytest.raises(ConfigError, match="granularity") as err:
        resolve_config({"recipe": "imp", "pruning": {"granularity": "channel", **pruning}})
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_channel_norm_without_channel_granularity_is_refused():
    with pytest.raises(ConfigError, match="channel_norm = 'l2' scores channels"):
        resolve_config({"recipe": "imp", "pruning": {"channel_norm": "l2"}})


def test_missing_torch_pruning_is_named_before_anything_is_written(tmp_path, monkeypatch):
    import sparseavg.recipes.registry as registry

    monkeypatch.setattr(registry, "torch_pruning_available", lambda: False)
    with pytest.raises(ConfigError) as err:
        resolve_config({"recipe": "swamp", "pruning": {"granularity": "channel"}})
    assert str(err.value) == (
        "pruning.granularity = 'channel' needs the torch-pruning package: "
        'pip install "sparseavg[structured]"'
    )
    argv = tiny_args("imp", tmp_path / "runs", "--set", 'pruning.granularity="channel"')
    assert main(argv) != 0
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# -- every recipe family, end to end ---------------------------------------------------------------

# conv1d of width 8 on MNIST-1D: three conv layers of 8 channels (24) feeding the classifier
_FAMILIES = {
    "imp": ([], [24, 18, 14]),  # 0.25 of 24 = 6; round(0.25 * 18) = round(4.5) = 4
    "swamp": (["--set", "ingredients.count=2"], [24, 18, 14]),
    "sms": (["--set", "ingredients.count=2"], [24, 18, 14]),
    "random": ([], [24, 18, 14]),  # the random-channel baseline: magnitude's counts
}


def _channels(run_dir, cycle: int):
    from sparseavg.data import load_dataset
    from sparseavg.models import build_model

    data = load_dataset("mnist1d")
    model = build_model("conv1d", data.num_classes, data.input_shape, width=8)
    names = list(prunable_parameters(model))
    groups = channel_groups(model, torch.zeros(2, *data.input_shape), names)
    cdir = run_dir / f"cycle_{cycle:02d}"
    mask = Mask.load(cdir / "mask.safetensors")
    return mask, groups, load_tensors(cdir / "combined.safetensors")


def _whole(mask: Mask, groups) -> None:
    """The mask is exactly its pruned channels removed from an all-alive mask: zeros in whole
    rows and the coupled columns, nothing else."""
    dead = [set(torch.nonzero(~a).flatten().tolist()) for a in alive_channels(mask, groups)]
    assert remove_channels(Mask.ones_like(mask), groups, dead) == mask


@needs_tp
@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(_FAMILIES))
def test_every_recipe_family_runs_with_channel_masks(tmp_path, recipe):
    extra, expected = _FAMILIES[recipe]
    args = ["--set", 'pruning.granularity="channel"', "--set", "pruning.fraction=0.25", *extra]
    assert main(tiny_args(recipe, tmp_path, *args)) == 0
    run = only_run(tmp_path)
    counts = []
    for cycle in range(3):
        mask, groups, combined = _channels(run, cycle)
        _whole(mask, groups)
        counts.append(sum(int(a.sum()) for a in alive_channels(mask, groups)))
        # the combined model (an average for swamp and sms) is zero wherever the mask is
        assert Mask.from_weights({n: combined[n] for n in mask}).num_alive <= mask.num_alive
        assert all(not combined[n][~mask[n]].any() for n in mask)
    assert counts == expected


@needs_tp
@pytest.mark.slow
def test_gmp_prunes_whole_channels_to_its_channel_target(tmp_path):
    args = [
        "--set",
        'pruning.granularity="channel"',
        "--set",
        "pruning.target_sparsity=0.5",
        "--set",
        "train.epochs=4",
        "--set",
        "pruning.rewind_epochs=0.0",
    ]
    assert main(tiny_args("gmp", tmp_path, *args, cycles=None)) == 0
    mask, groups, combined = _channels(only_run(tmp_path), 0)
    _whole(mask, groups)
    assert sum(int(a.sum()) for a in alive_channels(mask, groups)) == 12  # round(0.5 * 24)
    assert all(not combined[n][~mask[n]].any() for n in mask)


# -- the user's own model and loop ----------------------------------------------------------------


@needs_tp
@pytest.mark.slow
def test_own_run_traces_the_users_example_and_refuses_without_one(tmp_path):
    import sparseavg
    from engine_helpers import tiny_config
    from test_own import _builtin_as_train_fn, _mnist1d

    config = tiny_config({"recipe": "imp"})
    data, model_fn, eval_fn = _mnist1d(config)
    train_fn = _builtin_as_train_fn(data, config.train.batch_size)
    values = {
        "train": {"epochs": 2, "lr": 0.05},
        "pruning": {"cycles": 2, "rewind_epochs": 1, "granularity": "channel", "fraction": 0.25},
    }
    with pytest.raises(ConfigError, match=r"pass an input batch of your model as example="):
        sparseavg.imp(model_fn, train_fn, eval_fn, runs_dir=tmp_path / "a", config=values)
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    result = sparseavg.imp(
        model_fn,
        train_fn,
        eval_fn,
        runs_dir=tmp_path / "b",
        config=values,
        example=torch.zeros(2, *data.input_shape),
        progress=False,
    )
    counts = []
    for cycle in range(3):
        mask, groups, _ = _channels(result.path, cycle)
        _whole(mask, groups)
        counts.append(sum(int(a.sum()) for a in alive_channels(mask, groups)))
    assert counts == [24, 18, 14]
