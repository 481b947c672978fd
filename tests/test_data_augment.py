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


def test_cifar_pads_black_then_normalises_like_the_sms_code() -> None:
    # The SMS code: RandomCrop(32, padding=4) on the raw image (black padding), flip, then
    # Normalize. Ours works on the stored normalised tensor in one batched op, padding with
    # -mean/std per channel: the same numbers exactly, padded pixels included.
    from sparseavg.data.sources import cifar

    spec = cifar.CIFAR10
    assert spec.mean == (0.4914, 0.4822, 0.4465) and spec.std == (0.2023, 0.1994, 0.2010)
    assert cifar.CIFAR100.mean == (0.5071, 0.4867, 0.4408)
    assert cifar.CIFAR100.std == (0.2675, 0.2565, 0.2761)
    raw = torch.randint(0, 256, (6, 3, 32, 32), generator=_gen(3), dtype=torch.uint8)
    out = cifar.train_augmentation(spec)(cifar.normalise(raw, spec), _gen(4))
    g = _gen(4)  # the draws in the augmentation's order: crop offsets, then flips
    offsets = torch.randint(0, 9, (2, 6), generator=g)
    flips = torch.rand(6, generator=g) < 0.5
    padded = F.pad(raw.float() / 255.0, (4, 4, 4, 4))  # black in [0, 1] pixel space
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    for b in range(6):
        i, j = offsets[:, b].tolist()
        window = padded[b, :, i : i + 32, j : j + 32]
        expected = (window.flip(-1) if flips[b] else window) - mean
        assert torch.equal(out[b], expected / std), f"sample {b}"
    # a window starting at row i < 4 has 4 - i padded rows on top: black, normalised
    b = int(offsets[0].argmin())
    rows = 4 - int(offsets[0, b])
    assert rows > 0, "the draw should put some window into the top padding"
    top = out[b, :, :rows, :]
    black = [-0.4914 / 0.2023, -0.4822 / 0.1994, -0.4465 / 0.2010]  # -2.4291, -2.4182, -2.2214
    for c in range(3):
        assert torch.equal(top[c], torch.full_like(top[c], (0.0 - spec.mean[c]) / spec.std[c]))
        assert top[c, 0, 0].item() == pytest.approx(black[c], abs=1e-6)


def test_fill_needs_one_value_per_channel() -> None:
    with pytest.raises(ValueError, match="fill has 2 values for 3 channels"):
        Augmentation(crop_padding=1, fill=(0.0, 1.0))(torch.zeros(2, 3, 4, 4), _gen(0))
