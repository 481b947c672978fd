"""N:M masks as pure functions: exact masks on hand-made tensors, ties, the conv layout, the
counts of an IMP schedule towards 2:4, gradual pruning, bad input, and the 2:4 check of the
semi-structured export."""

import pytest
import torch
from torch import nn

from sparseavg.models import build_model
from sparseavg.pruning import (
    GradualMagnitudePruning,
    Mask,
    MaskError,
    SemiStructuredError,
    fraction_per_cycle,
    is_nm,
    nm_prune,
    nm_prune_to,
    nonzeros_per_group,
    parse_pattern,
    random_nm_prune,
    semi_structured_problem,
    to_groups,
    to_semi_structured,
    ungroupable,
)
from sparseavg.pruning.nm import from_groups

ROWS = {
    "w": torch.tensor(
        [
            [1.0, -4.0, 3.0, 2.0, 0.5, 0.5, 0.5, 0.5],
            [9.0, 8.0, 7.0, 6.0, -1.0, 2.0, -3.0, 4.0],
        ]
    )
}


def _ints(mask: Mask, name: str = "w") -> list:
    return mask[name].int().tolist()


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "fc.weight": torch.randn(6, 8, generator=g),
        "conv.weight": torch.randn(4, 8, 3, generator=g),
    }


# -- patterns ------------------------------------------------------------------------------------


def test_parse_pattern_accepts_n_below_m_up_to_32():
    assert parse_pattern("unstructured") is None
    assert parse_pattern("2:4") == (2, 4)
    assert parse_pattern("1:4") == (1, 4)
    assert parse_pattern("4:8") == (4, 8)
    assert parse_pattern("31:32") == (31, 32)


@pytest.mark.parametrize(
    "text", ["2:2", "4:2", "0:4", "2:33", "2-4", "2:4 ", " 2:4", "", "a:b", "2:4:8"]
)
def test_parse_pattern_refuses_with_what_it_accepts(text):
    with pytest.raises(ValueError, match=r"'N:M' with 0 < N < M <= 32"):
        parse_pattern(text)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("02:4", "2:4"), ("2:04", "2:4"), ("\uff12:\uff14", "2:4"), ("0002:0008", "2:8")],
)
def test_parse_pattern_refuses_other_spellings_naming_the_canonical_one(text, canonical):
    """'02:4', '2:04' and full-width digits parsed as 2:4 but hashed as other run names."""
    with pytest.raises(ValueError, match=rf"^{text!r} is written {canonical!r} \(ASCII"):
        parse_pattern(text)


# -- exact masks ---------------------------------------------------------------------------------


def test_last_cycle_keeps_exactly_the_two_largest_of_every_four_ties_to_the_later():
    mask = nm_prune(ROWS, Mask.ones_like(ROWS), 2, 4)
    # row 0: |1 -4 3 2| keeps -4, 3; |.5 .5 .5 .5| (all tied) keeps the last two
    # row 1: |9 8 7 6| keeps 9, 8;   |-1 2 -3 4| keeps -3, 4
    assert _ints(mask) == [[0, 1, 1, 0, 0, 0, 1, 1], [1, 1, 0, 0, 0, 0, 1, 1]]
    assert nm_prune(ROWS, Mask.ones_like(ROWS), 1, 4)["w"].int().tolist() == [
        [0, 1, 0, 0, 0, 0, 0, 1],
        [1, 0, 0, 0, 0, 0, 0, 1],
    ]


def test_an_earlier_cycle_removes_the_smallest_but_never_the_n_largest_of_a_group():
    # 16 alive, round(0.25 * 16) = 4 removed from the weights outside each group's top two:
    # 0.5 and 0.5 (row 0, group 2, the first two of the tie), 1 (row 0), then -1 (row 1)
    mask = nm_prune(ROWS, Mask.ones_like(ROWS), 2, 4, fraction=0.25)
    assert _ints(mask) == [[0, 1, 1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 0, 1, 1, 1]]
    # a fraction that asks for more than the groups can give stops at exactly 2 per group
    greedy = nm_prune(ROWS, Mask.ones_like(ROWS), 2, 4, fraction=0.9)
    assert greedy == nm_prune(ROWS, Mask.ones_like(ROWS), 2, 4)


def test_groups_run_along_input_channels_at_each_kernel_position():
    # conv weight (out=1, in=4, k=2): kernel position 0 holds 1 2 3 4 over the channels,
    # position 1 holds 8 7 6 5. ASP's layout keeps channels 2, 3 at k=0 and 0, 1 at k=1; the
    # flattened (in * k) layout would group [1 8 2 7] and [3 6 4 5] and keep only k=1.
    w = {"w": torch.tensor([[[1.0, 8.0], [2.0, 7.0], [3.0, 6.0], [4.0, 5.0]]])}
    mask = nm_prune(w, Mask.ones_like(w), 2, 4)
    assert _ints(mask) == [[[0, 1], [0, 1], [1, 0], [1, 0]]]
    g = torch.Generator().manual_seed(0)
    conv2d = {"c": torch.randn(3, 8, 3, 3, generator=g)}
    counts = nonzeros_per_group(nm_prune(conv2d, Mask.ones_like(conv2d), 2, 4)["c"], 4)
    assert counts.tolist() == [2] * (3 * 3 * 3 * 2)
    # each group is 4 channels at one (out, kh, kw)
    top = nm_prune(conv2d, Mask.ones_like(conv2d), 2, 4)["c"]
    for o, i, j in [(0, 0, 0), (2, 1, 2)]:
        for start in (0, 4):
            assert int(top[o, start : start + 4, i, j].sum()) == 2


def test_to_groups_and_back_are_inverse():
    t = torch.arange(2 * 8 * 3 * 2).reshape(2, 8, 3, 2)
    groups = to_groups(t, 4)
    assert groups.shape == (2 * 3 * 2 * 2, 4)
    assert groups[0].tolist() == [0, 6, 12, 18]  # channels 0-3 at (out 0, 0, 0)
    assert torch.equal(from_groups(groups, t.shape), t)


def test_no_weight_is_revived_and_a_short_group_keeps_what_it_has():
    start = Mask({"w": torch.tensor([[True, False, False, False, True, True, True, True]])})
    w = {"w": torch.tensor([[1.0, 9.0, 9.0, 9.0, 1.0, 2.0, 3.0, 4.0]])}
    assert _ints(nm_prune(w, start, 2, 4)) == [[1, 0, 0, 0, 0, 0, 1, 1]]
    assert not is_nm(torch.ones(1, 8), 2, 4)
    assert is_nm(nm_prune(w, start, 2, 4)["w"], 2, 4)


def test_equal_magnitudes_across_groups_go_in_mask_then_index_order():
    w = {"a": torch.ones(1, 8), "b": torch.ones(1, 8)}
    mask = nm_prune(w, Mask.ones_like(w), 2, 4, fraction=0.125)  # round(0.125 * 16) = 2
    assert _ints(mask, "a") == [[0, 0, 1, 1, 1, 1, 1, 1]]
    assert _ints(mask, "b") == [[1] * 8]


# -- an IMP schedule towards 2:4 -----------------------------------------------------------------


def test_three_cycles_to_two_of_four_remove_the_imp_counts_then_leave_exactly_two():
    w = _weights()
    f = fraction_per_cycle(0.5, 3)  # 0.2063
    mask = Mask.ones_like(w)
    alive = []
    for cycle in (1, 2, 3):
        new = nm_prune(w, mask, 2, 4, fraction=None if cycle == 3 else f)
        for n in w:
            assert not (new[n] & ~mask[n]).any()
            assert int(nonzeros_per_group(new[n], 4).min()) >= 2
        mask = new
        alive.append(mask.num_alive)
    # 144 weights: round(0.2063 * 144) = 30, round(0.2063 * 114) = 24, then 2 of every 4
    assert alive == [114, 90, 72]
    for n in w:
        assert nonzeros_per_group(mask[n], 4).tolist() == [2] * (mask[n].numel() // 4)


def test_layerwise_scope_prunes_each_layer_by_the_fraction():
    w = _weights()
    mask = nm_prune(w, Mask.ones_like(w), 2, 4, fraction=0.2063, scope="layerwise")
    # round(0.2063 * 48) = 10, round(0.2063 * 96) = 20
    assert [int(mask[n].sum()) for n in w] == [38, 76]


def test_random_nm_masks_are_exact_and_fixed_by_the_seed():
    w = _weights()
    ones = Mask.ones_like(w)

    def draw(seed, fraction=None):
        return random_nm_prune(ones, 2, 4, fraction, generator=torch.Generator().manual_seed(seed))

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)
    for n in w:
        assert nonzeros_per_group(draw(0)[n], 4).tolist() == [2] * (w[n].numel() // 4)
    assert draw(0, 0.2).num_alive == 144 - 29  # round(0.2 * 144)


def test_prune_to_a_sparsity_keeps_n_per_group_and_ends_exactly_nm():
    w = _weights()
    ones = Mask.ones_like(w)
    quarter = nm_prune_to(w, ones, 2, 4, 0.25)
    assert quarter.num_pruned == 36
    assert nm_prune_to(w, quarter, 2, 4, 0.5) == nm_prune(w, ones, 2, 4)


def test_gradual_pruning_with_a_pattern_ends_exactly_nm():
    w = _weights()
    gmp = GradualMagnitudePruning(0, 3, 0.5, pattern=(2, 4))
    mask = Mask.ones_like(w)
    sparsities = []
    for epoch in (1, 2, 3):
        mask = gmp.update(epoch, w, None, mask) or mask
        sparsities.append(round(mask.sparsity, 4))
    # cubic: 0.5 - 0.5 * (1 - t/3)^3 = 0.3519, 0.4815, 0.5 of 144
    assert sparsities == [round(51 / 144, 4), round(69 / 144, 4), 0.5]
    assert all(is_nm(mask[n], 2, 4) for n in w)
    with pytest.raises(ValueError, match=r"2:4 pattern, 0\.5"):
        GradualMagnitudePruning(0, 3, 0.9, pattern=(2, 4))


# -- bad input -----------------------------------------------------------------------------------


def test_weights_that_cannot_be_grouped_are_refused_by_name():
    w = {"first.weight": torch.randn(8, 1, 5)}
    with pytest.raises(MaskError, match=r"'first.weight'.*1 input channel \(shape \(8, 1, 5\)\)"):
        nm_prune(w, Mask.ones_like(w), 2, 4)
    bias = {"b": torch.randn(8)}
    with pytest.raises(MaskError, match="no input dimension"):
        nm_prune(bias, Mask.ones_like(bias), 2, 4)


@pytest.mark.parametrize(("n", "m"), [(4, 4), (0, 4), (3, 2), (2, 64)])
def test_a_bad_n_m_is_refused(n, m):
    with pytest.raises(ValueError, match=f"0 < n < m <= 32, got n = {n}, m = {m}$"):
        nm_prune(ROWS, Mask.ones_like(ROWS), n, m)


def test_non_finite_weights_and_bad_fractions_are_refused():
    w = {"w": ROWS["w"].clone()}
    w["w"][0, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite weights in w"):
        nm_prune(w, Mask.ones_like(w), 2, 4)
    with pytest.raises(ValueError, match="fraction must be in"):
        nm_prune(ROWS, Mask.ones_like(ROWS), 2, 4, fraction=1.0)


def test_ungroupable_names_the_layers_an_nm_pattern_cannot_cut():
    torch.manual_seed(0)
    model = build_model("conv1d", 10, (1, 40), width=8)
    names = [n for n, p in model.named_parameters() if p.dim() > 1]
    assert ungroupable(model, names, 4) == {
        "features.0.weight": "has 1 input channel (shape (8, 1, 5)), not a multiple of 4"
    }
    assert ungroupable(model, names[1:], 8) == {}
    odd = nn.Sequential(nn.ConvTranspose1d(4, 4, 3), nn.Linear(6, 4))
    assert ungroupable(odd, ["0.weight", "1.weight"], 4) == {
        "0.weight": "is a transposed convolution, which no N:M kernel runs",
        "1.weight": "has 6 input channels (shape (4, 6)), not a multiple of 4",
    }


# -- the 2:4 check of the semi-structured export -------------------------------------------------


def test_a_two_four_pruned_linear_weight_passes_the_semi_structured_check():
    g = torch.Generator().manual_seed(0)
    w = {"fc.weight": torch.randn(32, 64, generator=g)}
    mask = nm_prune(w, Mask.ones_like(w), 2, 4)
    pruned = mask.applied(w)["fc.weight"]
    assert semi_structured_problem(pruned.half()) is None
    assert semi_structured_problem(pruned.bfloat16()) is None
    one_four = nm_prune(w, Mask.ones_like(w), 1, 4)  # at most 2 of 4 holds for 1:4 too
    assert semi_structured_problem(one_four.applied(w)["fc.weight"].half()) is None
    assert semi_structured_problem(w["fc.weight"].half()) == (
        "is not 2:4: 4 non-zeros in row 0, columns 0-3 (512 such groups of 4)"
    )
    assert semi_structured_problem(pruned) == (
        "is torch.float32; 2:4 kernels take float16 or bfloat16 (model.half())"
    )
    assert semi_structured_problem(torch.zeros(4, 6).half()) == (
        "has 6 input features, not a multiple of 4"
    )
    assert semi_structured_problem(torch.zeros(4, 4, 3).half()) == "is not 2-D (shape (4, 4, 3))"


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a CUDA device")
def test_to_semi_structured_without_cuda_says_it_needs_a_gpu():
    model = nn.Sequential(nn.Linear(64, 32)).half()
    with pytest.raises(SemiStructuredError, match=r"need a CUDA GPU .*torch sees no CUDA device"):
        to_semi_structured(model)
    assert not model[0].weight.is_sparse and model[0].weight.layout == torch.strided


def test_to_semi_structured_refuses_weights_left_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).half()
    with pytest.raises(SemiStructuredError, match=r"weights of 0, 2 are not on a CUDA device"):
        to_semi_structured(model)


@pytest.mark.parametrize(
    ("n", "m"), [(2.0, 4), (2, 4.0), (True, 4), ("2", 4), (4, 2), (0, 4), (2, 33)]
)
def test_n_and_m_are_named_when_they_are_not_integers_with_0_lt_n_lt_m(n, m):
    """nm_prune(W, M, 2.0, 4) raised a TypeError about slice indices, naming neither."""
    weights = {"w": torch.arange(16.0).reshape(2, 8)}
    mask = Mask.ones_like(weights)
    message = rf"^n and m: an N:M pattern needs integers 0 < n < m <= 32, got n = {n!r}, m = {m!r}$"
    for prune in (
        lambda: nm_prune(weights, mask, n, m),
        lambda: nm_prune_to(weights, mask, n, m, 0.5),
        lambda: random_nm_prune(mask, n, m, generator=torch.Generator()),
    ):
        with pytest.raises(ValueError, match=message):
            prune()
