import pytest
import torch
from torch import nn

from helpers import tiny_net
from sparseavg.pruning import (
    GradualMagnitudePruning,
    Mask,
    MaskError,
    cubic_sparsity,
    fraction_per_cycle,
    magnitude_prune,
    prunable_parameters,
    random_prune,
    relative_norm_drop,
    shuffle_within_layers,
    sparsity_after,
)
from sparseavg.utils.files import CorruptFileError


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.randn(10, 7, generator=g),
        "b.weight": torch.randn(3, 4, 5, generator=g),
    }


def test_prunable_parameters_are_conv_and_linear_weights_only():
    model = tiny_net()
    assert list(prunable_parameters(model)) == ["conv.weight", "fc.weight"]
    assert list(prunable_parameters(model, exclude_first=True)) == ["fc.weight"]
    assert list(prunable_parameters(model, exclude_last=True)) == ["conv.weight"]
    assert list(prunable_parameters(model, exclude=["fc.*"])) == ["conv.weight"]
    with pytest.raises(ValueError, match="no conv or linear"):
        prunable_parameters(nn.BatchNorm1d(3))


def test_global_magnitude_prune_removes_exactly_the_smallest():
    w = _weights()
    mask = Mask.ones_like(w)
    assert mask.num_alive == 130
    new = magnitude_prune(w, mask, 0.2)
    assert new.num_alive == 130 - 26  # round(0.2 * 130)
    pruned = torch.cat([w[n][~new[n]].abs() for n in w])
    kept = torch.cat([w[n][new[n]].abs() for n in w])
    assert pruned.max() < kept.min()
    # again from the new mask: round(0.2 * 104) = 21 more, none revived
    newer = magnitude_prune(w, new, 0.2)
    assert newer.num_alive == 104 - 21
    for n in w:
        assert not (newer[n] & ~new[n]).any()


def test_pruned_weights_are_never_revived_even_when_large():
    w = _weights()
    mask = Mask.ones_like(w)
    mask = magnitude_prune(w, mask, 0.5)
    big = {
        n: torch.where(mask[n], torch.zeros_like(t), torch.full_like(t, 100.0))
        for n, t in w.items()
    }
    again = magnitude_prune(big, mask, 0.5)
    for n in w:
        assert not (again[n] & ~mask[n]).any()
    assert again.num_alive == mask.num_alive - round(0.5 * mask.num_alive)


def test_layerwise_prunes_each_layer_by_the_fraction():
    w = _weights()
    new = magnitude_prune(w, Mask.ones_like(w), 0.3, scope="layerwise")
    assert int(new["a.weight"].sum()) == 70 - 21
    assert int(new["b.weight"].sum()) == 60 - 18
    # on these weights global pruning happens to give the same counts; with b 10 times larger
    # it takes 36 from a and 3 from b, layerwise still 21 and 18, the smallest of each layer
    scaled = dict(w, **{"b.weight": w["b.weight"] * 10})
    ones = Mask.ones_like(w)
    assert [int(m.sum()) for m in magnitude_prune(scaled, ones, 0.3).values()] == [34, 57]
    new = magnitude_prune(scaled, ones, 0.3, scope="layerwise")
    assert [int(m.sum()) for m in new.values()] == [70 - 21, 60 - 18]
    for n, t in scaled.items():
        assert t.abs()[~new[n]].max() < t.abs()[new[n]].min()


def test_ties_are_broken_by_position():
    w = {"x.weight": torch.ones(2, 5), "y.weight": torch.ones(5)}
    new = magnitude_prune(w, Mask.ones_like(w), 0.4)  # 6 of 15
    assert new["x.weight"].flatten().tolist() == [False] * 6 + [True] * 4
    assert new["y.weight"].all()


def test_prune_refuses_bad_input():
    w = _weights()
    mask = Mask.ones_like(w)
    with pytest.raises(ValueError, match="fraction"):
        magnitude_prune(w, mask, 1.0)
    with pytest.raises(ValueError, match="scope"):
        magnitude_prune(w, mask, 0.2, scope="blockwise")  # type: ignore[arg-type]
    w_nan = dict(w, **{"a.weight": torch.full((10, 7), float("nan"))})
    with pytest.raises(ValueError, match="non-finite"):
        magnitude_prune(w_nan, mask, 0.2)
    with pytest.raises(MaskError, match="shape"):
        magnitude_prune({"a.weight": torch.ones(2), "b.weight": w["b.weight"]}, mask, 0.2)


def test_random_prune_is_seeded_and_exact():
    w = _weights()
    mask = Mask.ones_like(w)
    a = random_prune(mask, 0.25, generator=torch.Generator().manual_seed(1))
    b = random_prune(mask, 0.25, generator=torch.Generator().manual_seed(1))
    c = random_prune(mask, 0.25, generator=torch.Generator().manual_seed(2))
    assert a == b and a != c
    assert a.num_alive == 130 - round(0.25 * 130)


def test_mask_counts_report_and_roundtrip(tmp_path):
    w = _weights()
    mask = magnitude_prune(w, Mask.ones_like(w), 0.2)
    assert mask.num_total == 130 and mask.num_pruned == 26
    assert mask.sparsity == pytest.approx(0.2)
    rows = {r.name: r for r in mask.report()}
    assert rows["a.weight"].alive + rows["b.weight"].alive == 104
    assert "total" in mask.format_report()
    lines = [line.split() for line in mask.format_report().splitlines()]
    assert lines[1:] == [
        ["a.weight", "10x7", "58", "70", "17.14%"],
        ["b.weight", "3x4x5", "46", "60", "23.33%"],
        ["total", "104", "130", "20.00%"],
    ]
    mask.save(tmp_path / "m.safetensors")
    assert Mask.load(tmp_path / "m.safetensors") == mask
    # Mask equality ignores order; the file keeps the model order, not safetensors' sorted one
    unsorted = Mask({n: mask[n] for n in reversed(list(mask))})
    unsorted.save(tmp_path / "u.safetensors")
    assert list(Mask.load(tmp_path / "u.safetensors")) == ["b.weight", "a.weight"]


def test_bad_masks_are_refused_with_their_name(tmp_path):
    model = tiny_net()
    with pytest.raises(MaskError, match=r"'conv.weight' has dtype torch.float32"):
        Mask({"conv.weight": torch.ones(4, 1, 3, 3)})
    with pytest.raises(MaskError, match=r"'nope.weight' is not a parameter"):
        Mask({"nope.weight": torch.ones(2, dtype=torch.bool)}).validate(model)
    with pytest.raises(MaskError, match=r"'fc.weight' has shape \(3, 5\)"):
        Mask({"fc.weight": torch.ones(3, 5, dtype=torch.bool)}).validate(model)
    from sparseavg.utils.files import save_tensors

    save_tensors(tmp_path / "float.safetensors", {"fc.weight": torch.ones(3)})
    with pytest.raises(MaskError, match="not a mask"):
        Mask.load(tmp_path / "float.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CorruptFileError, match=r"junk\.safetensors"):
        Mask.load(tmp_path / "junk.safetensors")


def test_apply_zeroes_pruned_weights():
    model = tiny_net()
    params = prunable_parameters(model)
    mask = magnitude_prune(params, Mask.ones_like(params), 0.5)
    mask.apply_(model)
    for n, p in params.items():
        assert int((p == 0).sum()) == int((~mask[n]).sum())
        assert torch.equal(p == 0, ~mask[n])  # exactly the pruned positions


def test_fraction_schedules():
    f = fraction_per_cycle(0.9, 10)
    assert sparsity_after(f, 10) == pytest.approx(0.9)
    assert fraction_per_cycle(0.2, 1) == pytest.approx(0.2)
    assert cubic_sparsity(0, start_step=10, end_step=110, final_sparsity=0.8) == 0.0
    assert cubic_sparsity(60, start_step=10, end_step=110, final_sparsity=0.8) == pytest.approx(
        0.8 - 0.8 * 0.5**3
    )
    assert cubic_sparsity(200, start_step=10, end_step=110, final_sparsity=0.8) == 0.8
    with pytest.raises(ValueError):
        fraction_per_cycle(1.0, 3)


def test_layer_fractions_prune_matching_layers_on_their_own():
    w = _weights()
    ones = Mask.ones_like(w)
    mask = magnitude_prune(w, ones, 0.5, layer_fractions={"b.*": 0.1})
    assert ones["b.weight"].numel() - int(mask["b.weight"].sum()) == round(0.1 * 60)
    assert 70 - int(mask["a.weight"].sum()) == 35  # the rest: global at 0.5
    kept = w["b.weight"].abs()[mask["b.weight"]].min()
    assert kept >= w["b.weight"].abs()[~mask["b.weight"]].max()  # by magnitude within b
    # the first matching pattern wins; random pruning keeps the same counts
    first = magnitude_prune(w, ones, 0.5, layer_fractions={"b.weight": 0.2, "b.*": 0.9})
    assert 60 - int(first["b.weight"].sum()) == 12
    g = torch.Generator().manual_seed(0)
    rnd = random_prune(ones, 0.5, generator=g, layer_fractions={"b.*": 0.1})
    assert [int(rnd[n].sum()) for n in rnd] == [int(mask[n].sum()) for n in mask]
    with pytest.raises(ValueError, match="fraction"):
        magnitude_prune(w, ones, 0.5, layer_fractions={"b.*": 1.0})
    with pytest.raises(ValueError, match=r"'c\.\*' matches no prunable weight"):
        magnitude_prune(w, ones, 0.5, layer_fractions={"c.*": 0.1})


def test_shuffle_within_layers_keeps_each_layers_count_at_random_positions():
    w = _weights()
    mask = magnitude_prune(w, Mask.ones_like(w), 0.6)
    shuffled = shuffle_within_layers(mask, generator=torch.Generator().manual_seed(1))
    assert [int(shuffled[n].sum()) for n in shuffled] == [int(mask[n].sum()) for n in mask]
    assert shuffled != mask
    again = shuffle_within_layers(mask, generator=torch.Generator().manual_seed(1))
    assert again == shuffled
    assert shuffle_within_layers(mask, generator=torch.Generator().manual_seed(2)) != shuffled


def test_exclude_patterns_must_match_a_prunable_weight():
    with pytest.raises(ValueError, match=r"'fc2\.\*' matches no prunable weight"):
        prunable_parameters(tiny_net(), exclude=["fc2.*"])


def test_relative_norm_drop_of_a_known_pruning():
    before = {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0])}
    after = {"w": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0])}
    assert relative_norm_drop(before, after, ["w", "b"]) == pytest.approx(0.8)  # sqrt(16)/5
    assert relative_norm_drop(before, before, ["w"]) == 0.0


def test_gradual_magnitude_pruning_follows_the_cubic_schedule():
    w = _weights()
    rule = GradualMagnitudePruning(start_epoch=1, end_epoch=4, final_sparsity=0.8)
    ones = Mask.ones_like(w)
    assert rule.update(1, w, None, ones) is None  # not before start
    mask = rule.update(2, w, None, ones)
    target = cubic_sparsity(2, start_step=1, end_step=4, final_sparsity=0.8)
    assert mask is not None and mask.num_pruned == round(target * 130)
    final = rule.update(4, w, None, mask)
    assert final is not None and final.num_pruned == round(0.8 * 130)
    assert rule.update(4, w, None, final) is None and rule.update(5, w, None, final) is None


def test_a_step_that_empties_a_layer_warns_naming_it_and_layerwise_does_not() -> None:
    """Global pruning at 80 % of a 100-weight layer beside a 4-weight layer of small weights
    removes all 4: the step warns (DeadLayerWarning) and names the layer; layer-wise pruning
    keeps 1 of the 4 and stays silent."""
    import warnings

    from sparseavg.pruning import DeadLayerWarning, dead_layers

    weights = {"big.weight": torch.arange(1.0, 101.0), "out.weight": torch.full((4,), 0.5)}
    mask = Mask.ones_like(weights)
    with pytest.warns(DeadLayerWarning, match=r"no weight alive in out\.weight:"):
        pruned = magnitude_prune(weights, mask, fraction=0.8, scope="global")
    assert int(pruned["out.weight"].sum()) == 0 and dead_layers(mask, pruned) == ["out.weight"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeadLayerWarning)
        layerwise = magnitude_prune(weights, mask, fraction=0.8, scope="layerwise")
    assert int(layerwise["out.weight"].sum()) == 1
    assert dead_layers(pruned, pruned) == []  # a layer already empty is not reported again
