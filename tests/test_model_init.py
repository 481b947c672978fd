"""``model.init``: today's initialisation by default, open_lth's for the lottery-ticket configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from sparseavg.config import read_toml
from sparseavg.data import Dataset, Split
from sparseavg.experiment.task import make_model
from sparseavg.recipes import resolve_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _data(shape: tuple[int, ...], classes: int = 10) -> Dataset:
    split = Split(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.int64))
    return Dataset("x", split, None, split, num_classes=classes, input_shape=shape)


def _model(name: str, init: str | None, shape: tuple[int, ...], seed: int = 3) -> nn.Module:
    model: dict[str, object] = {"name": name}
    if init is not None:
        model["init"] = init
    return make_model(resolve_config({"model": model}), _data(shape), seed)


def test_open_lth_lenet_is_open_lths_lenet_bit_for_bit() -> None:
    # open_lth's mnist_lenet_300_100: nn.Linear layers built in order (torch's defaults),
    # then kaiming_normal_ on each weight (models/initializers.py), under the same seed
    torch.manual_seed(3)
    layers = [nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(100, 10)]
    for layer in layers:
        nn.init.kaiming_normal_(layer.weight)
    expected = [t for layer in layers for t in (layer.weight, layer.bias)]
    ours = list(_model("lenet300_100", "open_lth", (1, 28, 28)).parameters())
    assert len(ours) == len(expected)
    for a, b in zip(ours, expected, strict=True):
        assert torch.equal(a, b)
    # the default keeps torch's default for linear weights: not open_lth's
    default = list(_model("lenet300_100", None, (1, 28, 28)).parameters())
    assert not torch.equal(default[0], expected[0])
    assert torch.equal(default[1], expected[1])  # biases: torch's default in both


def test_open_lth_resnet_statistics() -> None:
    model = _model("resnet20", "open_lth", (3, 32, 32))
    default = _model("resnet20", None, (3, 32, 32))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    for bn in bns:  # BatchNorm weights uniform in [0, 1), biases 0 (open_lth's "uniform")
        assert bool((bn.weight >= 0).all() and (bn.weight < 1).all())
        assert len(set(bn.weight.tolist())) == bn.weight.numel() and not bn.bias.any()
    all_bn = torch.cat([bn.weight.detach() for bn in bns])
    assert abs(float(all_bn.mean()) - 0.5) < 0.05
    assert all(
        bool((m.weight == 1).all()) for m in default.modules() if isinstance(m, nn.BatchNorm2d)
    )
    # a 3x3 conv 16 -> 32: Kaiming normal fan_in (std sqrt(2/144) = 0.118) for open_lth,
    # fan_out (sqrt(2/288) = 0.083) by default
    conv = next(
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.weight.shape[:2] == (32, 16) and m.weight.shape[2] == 3
    )
    conv0 = next(
        m
        for m in default.modules()
        if isinstance(m, nn.Conv2d) and m.weight.shape[:2] == (32, 16) and m.weight.shape[2] == 3
    )
    assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / 144), rel=0.04)
    assert float(conv0.weight.detach().std()) == pytest.approx(math.sqrt(2 / 288), rel=0.04)
    # the classifier 64 -> 10: Kaiming normal fan_in (std 0.177) vs torch's default U(±1/8)
    fc, fc0 = model.fc.weight.detach(), default.fc.weight.detach()  # type: ignore[union-attr]
    assert float(fc.std()) == pytest.approx(math.sqrt(2 / 64), rel=0.15)
    assert float(fc0.abs().max()) <= 1 / 8


def test_open_lth_vgg_conv_bias_is_torchs_default() -> None:
    model = _model("vgg11", "open_lth", (3, 32, 32))
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    bound = 1 / math.sqrt(3 * 9)
    assert conv.bias is not None and conv.bias.abs().max() <= bound and conv.bias.any()
    default = _model("vgg11", None, (3, 32, 32))
    assert not next(m for m in default.modules() if isinstance(m, nn.Conv2d)).bias.any()  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["imp", "reinit", "shuffle"])
def test_lottery_ticket_configs_use_open_lths_init(name: str) -> None:
    config = resolve_config(read_toml(CONFIGS / f"{name}-mnist-lenet.toml"))
    assert config.pruning.rewind_epochs == 0 and config.model.init == "open_lth"
