"""Tests for sparseavg.models: registry, shapes, parameter counts, torch.func compatibility."""

from __future__ import annotations

import copy
import importlib.util
import math
import sys

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from sparseavg.models import available_models, build_model, count_parameters, register_model
from sparseavg.models import registry as registry_module

CIFAR = (3, 32, 32)
MNIST = (1, 28, 28)
MNIST1D = (1, 40)
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
TORCHVISION_MODELS = ("resnet18", "resnet50")

# Natural input shape of every built-in model (wrn instantiated by a few concrete names).
NATURAL_SHAPES: dict[str, tuple[int, ...]] = {
    "mlp": MNIST,
    "lenet300_100": MNIST,
    "conv1d": MNIST1D,
    "resnet20": CIFAR,
    "resnet32": CIFAR,
    "resnet56": CIFAR,
    "wrn16_2": CIFAR,
    "wrn28_2": CIFAR,
    "wrn32_4": CIFAR,
    "vgg11": CIFAR,
    "vgg13": CIFAR,
    "vgg16": CIFAR,
    "vgg19": CIFAR,
    "resnet18": (3, 64, 64),
    "resnet50": (3, 64, 64),
}
IMAGE_MODELS = ["resnet20", "wrn16_2", "vgg11"]
SMALL_MODELS = ["mlp", "lenet300_100", "conv1d", "resnet20", "wrn16_2", "vgg11"]


def _skip_if_unavailable(name: str) -> None:
    if name in TORCHVISION_MODELS and not HAS_TORCHVISION:
        pytest.skip("torchvision is not installed")


def _build(name: str, num_classes: int = 10, **options: object) -> nn.Module:
    _skip_if_unavailable(name)
    return build_model(name, num_classes, NATURAL_SHAPES[name], **options)


def _batch(name: str, n: int = 2) -> torch.Tensor:
    return torch.randn(n, *NATURAL_SHAPES[name])


@pytest.mark.parametrize(
    ("name", "input_shape", "num_classes", "expected"),
    [
        ("lenet300_100", MNIST, 10, 266_610),
        ("lenet300_100", (784,), 10, 266_610),
        ("mlp", MNIST, 10, 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10),
        ("conv1d", MNIST1D, 10, 13_802),
        ("resnet20", CIFAR, 10, 272_474),
        ("resnet32", CIFAR, 10, 466_906),
        ("resnet56", CIFAR, 10, 855_770),
        ("resnet20", CIFAR, 100, 278_324),
        ("wrn28_2", CIFAR, 10, 1_467_610),
        ("wrn16_8", CIFAR, 10, 10_961_370),
        ("wrn32_4", CIFAR, 10, 7_399_130),
        ("vgg16", CIFAR, 10, 14_728_266),
        ("vgg19", CIFAR, 10, 20_040_522),
    ],
)
def test_exact_parameter_counts(
    name: str, input_shape: tuple[int, ...], num_classes: int, expected: int
) -> None:
    model = build_model(name, num_classes, input_shape)
    assert count_parameters(model) == expected
    assert count_parameters(model, trainable_only=False) == expected


def test_count_parameters_trainable_only() -> None:
    model = build_model("lenet300_100", 10, MNIST)
    model.get_submodule("layers.1").requires_grad_(False)  # first Linear(784, 300)
    assert count_parameters(model) == 266_610 - 235_500
    assert count_parameters(model, trainable_only=False) == 266_610


def test_wrn_blocks_per_stage_conventions() -> None:
    def n_blocks(name: str) -> int:
        model = build_model(name, 10, CIFAR)
        return len(model.get_submodule("blocks")) // 3

    assert n_blocks("wrn28_2") == 4  # (28 - 4) / 6
    assert n_blocks("wrn16_8") == 2  # (16 - 4) / 6
    assert n_blocks("wrn32_4") == 5  # (32 - 2) / 6
    with pytest.raises(ValueError, match="wrn27_2"):
        build_model("wrn27_2", 10, CIFAR)
    with pytest.raises(ValueError, match="widen"):
        build_model("wrn28_0", 10, CIFAR)


@pytest.mark.parametrize("name", sorted(NATURAL_SHAPES))
def test_forward_shape_and_layers(name: str) -> None:
    model = _build(name, num_classes=7)
    model.eval()
    with torch.no_grad():
        out = model(_batch(name))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
    # in registration order (what exclude_first / exclude_last keep dense): the first layer
    # reads the input, the last is the classifier
    first, shape = layers[0], NATURAL_SHAPES[name]
    if isinstance(first, nn.Linear):
        assert first.in_features == math.prod(shape)
    else:
        assert first.in_channels == shape[0]
    assert isinstance(layers[-1], nn.Linear) and layers[-1].out_features == 7
    # Plain modules only: no in-place ReLU, no shared parameters, no hooks.
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())
    all_params = list(model.named_parameters(remove_duplicate=False))
    assert len(all_params) == len({id(p) for _, p in all_params})
    assert not any(n.endswith("_orig") for n, _ in all_params)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_forward_backward_train_mode() -> None:
    for name in SMALL_MODELS:
        model = _build(name)
        model.train()
        model(_batch(name, 4)).sum().backward()
        assert all(p.grad is not None for p in model.parameters()), name


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_channels_last_and_bf16_autocast(name: str) -> None:
    model = _build(name)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.eval()
    x = _batch(name).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x.contiguous())
        out = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = model(x)
    assert out.shape == out_bf16.shape == (2, 10)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert out_bf16.dtype == torch.bfloat16
    assert torch.isfinite(out_bf16.float()).all()


@pytest.mark.parametrize("name", sorted(NATURAL_SHAPES))
def test_same_seed_same_weights(name: str) -> None:
    _skip_if_unavailable(name)
    torch.manual_seed(123)
    a = _build(name).state_dict()
    torch.manual_seed(123)
    b = _build(name).state_dict()
    torch.manual_seed(124)
    c = _build(name).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))


def test_conv_init_is_kaiming_fan_out_and_bn_is_identity() -> None:
    torch.manual_seed(0)
    model = build_model("wrn16_8", 10, CIFAR)
    # blocks.0.conv1 widens 16 -> 128 channels: fan_out is 8 times fan_in, so the two differ
    for name in ("blocks.1.conv1", "blocks.0.conv1"):
        conv = model.get_submodule(name)
        assert isinstance(conv, nn.Conv2d)
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.05)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_functional_call_and_deepcopy_match(name: str) -> None:
    model = _build(name).eval()
    x = _batch(name)
    params_and_buffers = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with torch.no_grad():
        expected = model(x)
        got = functional_call(model, params_and_buffers, (x,))
        copied = copy.deepcopy(model)(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(copied, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mlp", "conv1d", "resnet20"])
def test_vmap_over_stacked_models(name: str) -> None:
    models = [_build(name).eval() for _ in range(3)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = _batch(name)

    def call(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        out: torch.Tensor = functional_call(base, (p, b), (x,))
        return out

    with torch.no_grad():
        out = torch.vmap(call)(params, buffers)
        expected = torch.stack([m(x) for m in models])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_options() -> None:
    mlp = build_model("mlp", 10, MNIST, hidden=(32,))
    assert count_parameters(mlp) == 784 * 32 + 32 + 32 * 10 + 10
    assert count_parameters(build_model("mlp", 10, MNIST, hidden=[])) == 7850
    conv = build_model("conv1d", 10, MNIST1D, width=8, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in conv.modules())
    assert conv(torch.randn(2, *MNIST1D)).shape == (2, 10)
    flat = build_model("conv1d", 10, (40,))
    assert flat(torch.randn(2, 40)).shape == (2, 10)
    wrn = build_model("wrn16_2", 10, CIFAR, dropout=0.3)
    assert sum(isinstance(m, nn.Dropout) for m in wrn.modules()) == 6
    assert wrn(torch.randn(2, *CIFAR)).shape == (2, 10)
    with pytest.raises(ValueError, match="width"):
        build_model("conv1d", 10, MNIST1D, width=0)
    with pytest.raises(ValueError, match="dropout"):
        build_model("wrn16_2", 10, CIFAR, dropout=1.5)
    with pytest.raises(ValueError, match="hidden"):
        build_model("mlp", 10, MNIST, hidden=(0,))
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", 0, MNIST)


def test_non_square_and_other_channel_images() -> None:
    for name in ("resnet20", "wrn16_2"):
        model = build_model(name, 10, (1, 8, 12))
        assert model(torch.randn(2, 1, 8, 12)).shape == (2, 10)
    assert build_model("vgg11", 5, (3, 16, 24))(torch.randn(2, 3, 16, 24)).shape == (2, 5)


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match="resnet21") as info:
        build_model("resnet21", 10, CIFAR)
    assert "resnet20" in str(info.value) and "wrn<depth>_<width>" in str(info.value)


@pytest.mark.parametrize(
    ("name", "bad_shape"),
    [
        ("resnet20", MNIST1D),
        ("resnet20", (3, 4, 4)),
        ("wrn28_2", (784,)),
        ("vgg16", (3, 8, 8)),
        ("conv1d", CIFAR),
        ("resnet18", (1, 224, 224)),
        ("mlp", (0, 3)),
    ],
)
def test_bad_input_shape(name: str, bad_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="input_shape") as info:
        build_model(name, 10, bad_shape)
    assert name in str(info.value) or name == "mlp"


def test_resnet_rejects_mnist1d_shape_with_accepted_shapes() -> None:
    with pytest.raises(ValueError, match=r"resnet20.*\(1, 40\).*\(C, H, W\)"):
        build_model("resnet20", 10, (1, 40))


@pytest.mark.parametrize("name", ["mlp", "resnet20", "wrn28_2", "lenet300_100"])
def test_unknown_option(name: str) -> None:
    with pytest.raises(TypeError, match="bogus_opt") as info:
        build_model(name, 10, NATURAL_SHAPES[name], bogus_opt=3)
    assert name in str(info.value)


def test_available_models() -> None:
    names = available_models()
    assert names == sorted(names)
    expected = {
        *("mlp", "lenet300_100", "conv1d", "resnet20", "resnet32", "resnet56"),
        *("vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet50", "wrn<depth>_<width>"),
    }
    assert expected <= set(names)


def test_register_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    def tiny(num_classes: int, input_shape: tuple[int, ...], *, scale: int = 1) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1] * scale, num_classes))

    register_model("tiny", tiny)
    assert "tiny" in available_models()
    assert build_model("tiny", 3, (5,))(torch.randn(2, 5)).shape == (2, 3)
    assert build_model("tiny", 3, (5,), scale=2)(torch.randn(2, 10)).shape == (2, 3)
    with pytest.raises(TypeError, match="nope"):
        build_model("tiny", 3, (5,), nope=1)
    with pytest.raises(ValueError, match="tiny"):
        register_model("tiny", tiny)
    with pytest.raises(TypeError):
        register_model("other", 42)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed")
@pytest.mark.parametrize(("name", "expected"), [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_torchvision_resnet_counts(name: str, expected: int) -> None:
    assert count_parameters(build_model(name, 1000, (3, 224, 224))) == expected


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_torchvision_missing_message(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ImportError) as info:
        build_model(name, 10, (3, 224, 224))
    assert str(info.value) == f"{name} needs torchvision: pip install 'sparseavg[vision]'"
