"""Augmentation: random crop after zero padding and random flips, as batched tensor ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparseavg.data import Augmentation


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _distinct(shape: tuple[int, ...]) -> torch.Tensor:
    """Values 1..numel, so every window of the padded input is distinguishable."""
    n = 1
    for s in shape:
        n *= s
    return torch.arange(1, n + 1, dtype=torch.float32).view(shape)


def test_crop_2d_is_a_window_of_the_padded_input() -> None:
    p = 2
    x = _distinct((16, 3, 5, 6))
    out = Augmentation(crop_padding=p)(x, _gen(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = F.pad(x, (p, p, p, p))
    offsets = set()
    for b in range(x.shape[0]):
        matches = [
            (i, j)
            for i in range(2 * p + 1)
            for j in range(2 * p + 1)
            if torch.equal(out[b], padded[b, :, i : i + 5, j : j + 6])
        ]
        assert len(matches) == 1, f"sample {b} is no window of the padded input"
        offsets.add(matches[0])
    assert len(offsets) > 3  # offsets really vary across the batch
    # each dim's offsets span all of [0, 2 * p], both ends included
    assert {i for i, _ in offsets} == {j for _, j in offsets} == set(range(2 * p + 1))


def test_crop_1d_is_a_window_of_the_padded_input() -> None:
    p = 3
    x = _distinct((20, 2, 10))
    out = Augmentation(crop_padding=p)(x, _gen(1))
    padded = F.pad(x, (p, p))
    offsets = set()
    for b in range(x.shape[0]):
        matches = [i for i in range(2 * p + 1) if torch.equal(out[b], padded[b, :, i : i + 10])]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert offsets == set(range(2 * p + 1))  # every offset in [0, 2 * p], both ends included


@pytest.mark.parametrize("shape", [(64, 3, 4, 5), (64, 1, 9)])
def test_flip_is_identity_or_exact_flip(shape: tuple[int, ...]) -> None:
    x = _distinct(shape)
    out = Augmentation(horizontal_flip=True)(x, _gen(2))
    flipped = 0
    for b in range(shape[0]):
        if torch.equal(out[b], x[b].flip(-1)):
            flipped += 1
        else:
            assert torch.equal(out[b], x[b])
    assert 0 < flipped < shape[0]


@pytest.mark.parametrize("shape", [(32, 3, 8, 8), (32, 1, 40)])
def test_same_seed_same_output_different_seed_different(shape: tuple[int, ...]) -> None:
    aug = Augmentation(crop_padding=4, horizontal_flip=True)
    x = torch.randn(shape, generator=_gen(9))
    a = aug(x, _gen(5))
    assert torch.equal(a, aug(x, _gen(5)))
    assert not torch.equal(a, aug(x, _gen(6)))


def test_disabled_is_identity_and_draws_nothing() -> None:
    aug = Augmentation()
    assert not aug.enabled
    assert Augmentation(crop_padding=1).enabled and Augmentation(horizontal_flip=True).enabled
    g = _gen(3)
    state = g.get_state()
    x = torch.randn(4, 1, 5)
    assert aug(x, g) is x
    assert torch.equal(g.get_state(), state)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        Augmentation(crop_padding=-1)
    with pytest.raises(ValueError):
        Augmentation(crop_padding=1)(torch.zeros(4, 5), _gen(0))
