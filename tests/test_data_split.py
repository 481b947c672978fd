"""Split batching, validation carving, and the LoaderSplit over a torch dataset."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from sparseavg.data import Augmentation, BatchSource, LoaderSplit, Split, carve_validation


def _split(n: int = 10, aug: Augmentation | None = None) -> Split:
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, 1, 4).contiguous()
    return Split(x, torch.arange(n), aug or Augmentation())


def _order(split: Split, batch_size: int, seed: int | None, drop_last: bool = False) -> list[int]:
    g = None if seed is None else torch.Generator().manual_seed(seed)
    return [
        int(v) for _, y in split.batches(batch_size, generator=g, drop_last=drop_last) for v in y
    ]


def test_split_is_a_batch_source() -> None:
    s = _split()
    assert isinstance(s, BatchSource)
    assert len(s) == 10 and s.input_shape == (1, 4)


def test_no_generator_gives_original_order() -> None:
    s = _split(10)
    assert _order(s, 3, None) == list(range(10))
    sizes = [len(y) for _, y in s.batches(3)]
    assert sizes == [3, 3, 3, 1] and s.num_batches(3) == 4


def test_same_seed_same_order_and_every_index_once() -> None:
    s = _split(23)
    a = _order(s, 5, 7)
    assert a == _order(s, 5, 7)
    assert sorted(a) == list(range(23))
    assert a != list(range(23))
    assert a != _order(s, 5, 8)
    assert a == torch.randperm(23, generator=torch.Generator().manual_seed(7)).tolist()


def test_inputs_follow_labels() -> None:
    s = _split(12)
    for x, y in s.batches(5, generator=torch.Generator().manual_seed(0)):
        assert torch.equal(x[:, 0, 0], y.float())


def test_drop_last() -> None:
    s = _split(10)
    batches = list(s.batches(3, generator=torch.Generator().manual_seed(1), drop_last=True))
    assert [len(y) for _, y in batches] == [3, 3, 3]
    assert s.num_batches(3, drop_last=True) == 3
    assert s.num_batches(5, drop_last=True) == s.num_batches(5) == 2


def test_augment_uses_the_generator_and_only_when_asked() -> None:
    s = Split(torch.randn(16, 1, 8), torch.zeros(16, dtype=torch.int64), Augmentation(2, True))

    def xs(seed: int, augment: bool) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.cat([x for x, _ in s.batches(4, generator=g, augment=augment)])

    plain = xs(0, False)
    assert torch.equal(plain, s.x[torch.randperm(16, generator=torch.Generator().manual_seed(0))])
    assert torch.equal(xs(0, True), xs(0, True))
    # the same generator draws the order, then each batch's augmentation
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(16, generator=g)
    replay = torch.cat([s.augmentation(s.x[idx], g) for idx in order.split(4)])
    assert torch.equal(xs(0, True), replay)
    assert not torch.equal(xs(0, True), plain)
    # without a generator there is no randomness: augment is ignored
    assert torch.equal(torch.cat([x for x, _ in s.batches(4, augment=True)]), s.x)


def test_split_validates_its_tensors() -> None:
    with pytest.raises(ValueError):
        Split(torch.zeros(3, 2), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError):
        Split(torch.zeros(3, 2), torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError):
        _split().num_batches(0)


def test_carve_validation_deterministic_disjoint_exact() -> None:
    s = _split(101, Augmentation(crop_padding=1))
    train, val = carve_validation(s, 0.2, seed=3)
    assert len(val) == round(0.2 * 101) == 20 and len(train) == 81
    t, v = set(train.y.tolist()), set(val.y.tolist())
    assert not t & v and t | v == set(range(101))
    train2, val2 = carve_validation(s, 0.2, seed=3)
    assert torch.equal(val.y, val2.y) and torch.equal(train.y, train2.y)
    assert not torch.equal(val.y, carve_validation(s, 0.2, seed=4)[1].y)
    perm = torch.randperm(101, generator=torch.Generator().manual_seed(3))
    assert v == set(perm[:20].tolist())
    # each part keeps the samples' original order
    assert val.y.tolist() == sorted(v) and train.y.tolist() == sorted(t)
    assert train.augmentation == Augmentation(crop_padding=1)
    assert not val.augmentation.enabled
    with pytest.raises(ValueError):
        carve_validation(s, 1.0, seed=0)


def test_loader_split() -> None:
    n = 11
    ds = TensorDataset(torch.arange(n, dtype=torch.float32).view(n, 1), torch.arange(n))
    src = LoaderSplit(ds)
    assert isinstance(src, BatchSource) and len(src) == n and src.num_batches(4) == 3

    def order(seed: int | None) -> list[int]:
        g = None if seed is None else torch.Generator().manual_seed(seed)
        return [int(v) for _, y in src.batches(4, generator=g) for v in y]

    assert order(None) == list(range(n))
    assert order(5) == order(5) != list(range(n))
    assert sorted(order(5)) == list(range(n))
    assert order(5) != order(6)  # the order comes from the generator, not a fixed seed
    assert [len(y) for _, y in src.batches(4, drop_last=True)] == [4, 4]
    x, y = next(src.batches(4))
    assert y.dtype == torch.int64 and x.shape == (4, 1)
    # the augmented dataset serves batches only when augment=True comes with a generator
    shifted = TensorDataset(torch.arange(n, dtype=torch.float32).view(n, 1) + 100, torch.arange(n))
    both = LoaderSplit(ds, augmented=shifted)
    for augment, seed, offset in ((True, 5, 100), (False, 5, 0), (True, None, 0)):
        g = None if seed is None else torch.Generator().manual_seed(seed)
        for x, y in both.batches(4, generator=g, augment=augment):
            assert torch.equal(x[:, 0], y.float() + offset)
