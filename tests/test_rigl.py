"""RigL's pieces, pinned to google-research/rigl's arithmetic on tiny layers (issue 17)."""

import math

import pytest
import torch

from sparseavg.pruning.mask import Mask, MaskError
from sparseavg.pruning.rigl import (
    alive_counts,
    apply_mask_update_,
    erk_densities,
    is_rigl_update_step,
    random_mask,
    rigl_drop_fraction,
    rigl_iterations,
    rigl_update,
    shared_rigl_update,
)

# A (2, 2), B (4, 8), C (8, 8): ERK raw probabilities sum(shape)/prod(shape) = 1, 0.375, 0.25.
SHAPES = {"a": (2, 2), "b": (4, 8), "c": (8, 8)}


def test_erk_by_hand_with_a_saturated_layer():
    # density 0.5: zeros floor(0.5 N) = 2, 16, 32; rhs = 2 + 16 + 32 = 50; divisor = 1*4 +
    # 0.375*32 + 0.25*64 = 32; eps = 50/32 = 1.5625 and 1 * eps > 1, so "a" becomes dense.
    # Again without it: rhs = -2 + 16 + 32 = 46, divisor = 12 + 16 = 28, eps = 46/28.
    d = erk_densities(SHAPES, 0.5)
    assert d == {"a": 1.0, "b": (46 / 28) * 0.375, "c": (46 / 28) * 0.25}
    assert d["b"] == 0.6160714285714286 and d["c"] == 0.4107142857142857
    # the expected alive count is exactly the uniform one: 4 + 19.714.. + 26.285.. = 50
    assert 4 + d["b"] * 32 + d["c"] * 64 == pytest.approx(50, abs=1e-12)
    # rigl draws N - floor((1 - d) N) alive: 4, 32 - 12, 64 - 37 = 51 (one more than 50)
    assert alive_counts(SHAPES, d) == {"a": 4, "b": 20, "c": 27}
    # apportioned to exactly 50: floors 4, 19, 26; the one left goes to b (.714 > .286)
    assert alive_counts(SHAPES, d, total_alive=50) == {"a": 4, "b": 20, "c": 26}


def test_erk_without_saturation_power_scale_and_er():
    # density 0.25 on b and c only: zeros 24, 48; rhs = 8 + 16 = 24; divisor = 12 + 16 = 28
    shapes = {"b": (4, 8), "c": (8, 8)}
    d = erk_densities(shapes, 0.25)
    assert d == {"b": (24 / 28) * 0.375, "c": (24 / 28) * 0.25}
    # power 0.5: raw sqrt(.375), sqrt(.25)=.5; divisor = sqrt(.375)*32 + 32
    d = erk_densities(shapes, 0.25, erk_power_scale=0.5)
    raw_b = 0.375**0.5
    eps = 24 / (raw_b * 32 + 0.5 * 64)
    assert d == {"b": eps * raw_b, "c": eps * 0.5}
    # "er" of a 4-d conv weight uses its first two dims (out, in) = (4, 2): (4+2)/8 = .75,
    # ERK uses all four: (4+2+3+3)/72 = 1/6
    conv = {"k": (4, 2, 3, 3), "c": (8, 8)}
    er = erk_densities(conv, 0.25, distribution="er")
    # zeros floor(.75*72)=54, 48; rhs = 18 + 16 = 34; divisor = .75*72 + .25*64 = 70
    assert er == {"k": (34 / 70) * 0.75, "c": (34 / 70) * 0.25}


def test_dense_layers_leave_the_computation_and_uniform():
    # "a" dense by request is left out: rhs = 16 + 32 = 48, divisor = 28
    d = erk_densities(SHAPES, 0.5, dense={"a"})
    assert d == {"a": 1.0, "b": (48 / 28) * 0.375, "c": (48 / 28) * 0.25}
    assert d["b"] * 32 + d["c"] * 64 == pytest.approx(48, abs=1e-12)  # 0.5 of b and c
    assert erk_densities(SHAPES, 0.2, distribution="uniform", dense={"a"}) == {
        "a": 1.0,
        "b": 0.2,
        "c": 0.2,
    }
    assert erk_densities(SHAPES, 1.0) == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_erk_refuses_bad_input():
    with pytest.raises(ValueError, match="density"):
        erk_densities(SHAPES, 0.0)
    with pytest.raises(ValueError, match="not among the layers"):
        erk_densities(SHAPES, 0.5, dense={"fc"})
    with pytest.raises(ValueError, match="distribution"):
        erk_densities(SHAPES, 0.5, distribution="snip")  # type: ignore[arg-type]


def test_random_mask_has_the_counts_and_follows_the_seed():
    counts = {"a": 1, "b": 20, "c": 27}
    m1 = random_mask(SHAPES, counts, generator=torch.Generator().manual_seed(0))
    m2 = random_mask(SHAPES, counts, generator=torch.Generator().manual_seed(0))
    assert m1 == m2
    assert {n: int(t.sum()) for n, t in m1.items()} == counts


def test_drop_fraction_cosine_as_tf_cosine_decay():
    f = [rigl_drop_fraction(s, end_step=100) for s in (0, 25, 50, 100, 150)]
    assert f == [0.3, 0.3 * (0.5 * (1 + math.cos(math.pi / 4))), 0.15, 0.0, 0.0]
    assert f[1] == 0.25606601717798213
    # rigl decays over end - begin steps but feeds the global step, not step - begin
    assert rigl_drop_fraction(20, begin_step=20, end_step=100) == 0.3 * (
        0.5 * (1 + math.cos(math.pi / 4))
    )
    assert rigl_drop_fraction(70, end_step=100, initial=0.5, schedule="constant") == 0.5


def test_update_iterations_match_rigls_own_test():
    # rigl/sparse_optimizers_test.py testApplyGradients: 1 = the global step advanced
    # (gradient step), 0 = a mask update that leaves it where it was
    cases = {
        (3, 7, 2): [1, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1],
        (1, 5, 3): [1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1],
        (0, 4, 1): [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1],
    }
    for (begin, end, freq), expected in cases.items():
        its = rigl_iterations(11, begin_step=begin, end_step=end, frequency=freq)
        assert [0 if update else 1 for _, update in its] == expected
        # each update step is met twice: the mask update, then a gradient step with its number
        seen = range(its[-1][0] + 1)
        assert [s for s, update in its if update] == [
            s
            for s in seen
            if is_rigl_update_step(s, begin_step=begin, end_step=end, frequency=freq)
        ]


def test_update_by_hand_drops_smallest_grows_largest_gradient():
    # alive 0.5, -0.2, 0.9, 0.1 at flat 0, 2, 3, 5; drop int(4 * 0.5) = 2: 0.1 (5), -0.2 (2).
    # Grow 2 among not kept {1, 2, 4, 5} by |g| = .3, .7, .8, .05: 4 and 2 (2 straight back).
    w = torch.tensor([[0.5, 0.0, -0.2], [0.9, 0.0, 0.1]])
    g = torch.tensor([[9.0, 0.3, -0.7], [9.0, -0.8, 0.05]])  # alive gradients do not matter
    mask = Mask({"w": torch.tensor([[True, False, True], [True, False, True]])})
    new, grown = rigl_update({"w": w}, {"w": g}, mask, 0.5)
    assert new["w"].tolist() == [[True, False, True], [True, True, False]]
    assert grown["w"].tolist() == [[False, False, False], [False, True, False]]
    assert new.num_alive == mask.num_alive == 4


def test_ties_and_the_float32_count():
    w = torch.tensor([1.0, -1.0, 1.0, 1.0, 0.0, 0.0])
    mask = Mask({"w": torch.tensor([True, True, True, True, False, False])})
    # equal |w|: the later ones go; equal |g| = 5: the earlier positions grow
    new, grown = rigl_update({"w": w}, {"w": torch.tensor([0.0, 0, 0, 0, 5, 5])}, mask, 0.5)
    assert new["w"].tolist() == [True, True, False, False, True, True]
    assert grown["w"].tolist() == [False, False, False, False, True, True]
    new, grown = rigl_update({"w": w}, {"w": torch.zeros(6)}, mask, 0.5)
    assert new == mask and not grown["w"].any()  # the two dropped are the first candidates
    # int(float32(90) * float32(0.7)) = 63 (float64 would give 62)
    big = Mask({"w": torch.ones(90, dtype=torch.bool)})
    weights = {"w": torch.arange(1.0, 91.0)}
    new, _ = rigl_update(weights, {"w": torch.zeros(90)}, big, 0.7)
    kept = new["w"] & (weights["w"] > 63)  # the 27 largest are kept; the rest regrown
    assert int(kept.sum()) == 27 and new.num_alive == 90


def test_alive_count_constant_over_many_updates():
    gen = torch.Generator().manual_seed(3)
    shapes = {"a": (5, 7), "b": (3, 4, 2)}
    mask = random_mask(shapes, {"a": 12, "b": 9}, generator=gen)
    for step in range(0, 300, 25):
        w = {n: torch.randn(s, generator=gen) * mask[n] for n, s in shapes.items()}
        g = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
        new, grown = rigl_update(w, g, mask, rigl_drop_fraction(step, end_step=225))
        assert {n: int(t.sum()) for n, t in new.items()} == {"a": 12, "b": 9}
        for n in shapes:
            dropped = mask[n] & ~new[n]
            assert not (grown[n] & mask[n]).any() and not (grown[n] & ~new[n]).any()
            assert int(dropped.sum()) == int(grown[n].sum())
            # every grown position beats every position dead after the update on |g|
            if grown[n].any():
                assert g[n].abs()[grown[n]].min() >= g[n].abs()[~new[n]].max()
        mask = new


def test_apply_mask_update_zeroes_grown_weights_and_their_momentum():
    model = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, 0.0, -0.2], [0.9, 0.0, 0.1]]))
    mask = Mask({"weight": torch.tensor([[True, False, True], [True, False, True]])})
    # SGD's state after some steps, momentum 1 everywhere (an optimizer built here would
    # import torch._dynamo, seconds); stale values at the dead places
    state = {model.weight: {"momentum_buffer": torch.ones(2, 3), "step": torch.tensor(4.0)}}
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, 0.3, -0.2], [0.9, 0.4, 0.1]]))
    g = torch.tensor([[9.0, 0.3, -0.7], [9.0, -0.8, 0.05]])
    new, grown = rigl_update(dict(model.named_parameters()), {"weight": g}, mask, 0.5)
    params = dict(model.named_parameters())
    apply_mask_update_(params, new, grown, state)
    # grown (1, 1) starts at 0 with 0 momentum; (0, 2) was dropped and regrown: value kept;
    # (1, 2) dropped: 0; (0, 1) stays dead: 0
    assert torch.equal(model.weight, torch.tensor([[0.5, 0.0, -0.2], [0.9, 0.0, 0.0]]))
    momentum = state[model.weight]["momentum_buffer"]
    assert torch.equal(momentum, torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    assert state[model.weight]["step"] == 4.0


def test_update_refuses_mismatched_input():
    mask = Mask({"w": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(MaskError, match="gradients lack"):
        rigl_update({"w": torch.ones(2, 2)}, {}, mask, 0.3)
    with pytest.raises(MaskError, match="shape"):
        rigl_update({"w": torch.ones(4)}, {"w": torch.ones(2, 2)}, mask, 0.3)
    with pytest.raises(ValueError, match="drop_fraction"):
        rigl_update({"w": torch.ones(2, 2)}, {"w": torch.ones(2, 2)}, mask, 1.5)


def test_particles_share_one_update_on_their_average():
    mask = Mask({"w": torch.tensor([True, True, True, False, False])})
    # alone, particle 0 would drop weight 0 and particle 1 weight 1; their average
    # (1.5, 1.75, 3) drops weight 0
    w = [{"w": torch.tensor([1.0, 2.0, 3.0, 0, 0])}, {"w": torch.tensor([2.0, 1.5, 3.0, 0, 0])}]
    # the signed gradients at 3 cancel (mean 0); at 4 they agree (mean 0.5): 4 grows
    g = [{"w": torch.tensor([0, 0, 0, 4.0, 0.5])}, {"w": torch.tensor([0, 0, 0, -4.0, 0.5])}]
    new, grown = shared_rigl_update(w, g, mask, 0.4)  # int(3 * 0.4) = 1
    assert new["w"].tolist() == [False, True, True, False, True]
    assert grown["w"].tolist() == [False, False, False, False, True]
    assert rigl_update(w[1], g[0], mask, 0.4)[0]["w"].tolist() == [True, False, True, True, False]
    with pytest.raises(ValueError, match="as many gradients"):
        shared_rigl_update(w, g[:1], mask, 0.4)
