"""``sparseavg export --slim``: the pruned channels removed physically, a smaller dense model
with the masked model's outputs (BatchNorm included), loadable with plain torch."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fake_runs import make_run
from sparseavg.cli.main import main
from sparseavg.experiment.rundir import RunDir
from sparseavg.experiment.runinfo import read_run
from sparseavg.experiment.task import load_data, make_model
from sparseavg.pruning import Mask, prunable_parameters
from sparseavg.pruning.channels import (
    ChannelGroups,
    channel_groups,
    channel_prune,
    expected_removed,
    parameter_count,
    remove_channels,
    slim_model,
)
from sparseavg.utils.files import load_tensors, save_tensors
from test_channels import TinyRes

CONV1D = {
    "recipe": "imp",
    "pruning": {"cycles": 1, "rewind_epochs": 0.5, "granularity": "channel"},
    "model": {"options": {"width": 8}},
    "train": {"epochs": 2},
    "execution": {"device": "cpu"},
}


@pytest.fixture
def torch_pruning():
    """Skips a test when the optional torch-pruning package is missing."""
    return pytest.importorskip("torch_pruning")


needs_tp = pytest.mark.usefixtures("torch_pruning")


def _trained_bn(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """``model`` with BatchNorm statistics and affine parameters far from their defaults."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    model.train()
    for _ in range(3):
        model(torch.randn(16, *shape))
    return model.eval()


def _half_of_each_layer(model: nn.Module, example: torch.Tensor) -> tuple[Mask, ChannelGroups]:
    """The mask pruning half of each channel group's channels by L1 norm, and the groups."""
    weights = prunable_parameters(model)
    groups = channel_groups(model, example, list(weights))
    state = {n: w.detach() for n, w in weights.items()}
    mask = channel_prune(state, Mask.ones_like(weights), groups, 0.5, scope="layerwise")
    return mask, groups


@needs_tp
def test_slim_tiny_resnet_equals_the_masked_model_and_has_159_parameters():
    torch.manual_seed(0)
    model = _trained_bn(TinyRes(), (1, 6, 6))
    example = torch.randn(2, 1, 6, 6)
    weights = prunable_parameters(model)
    groups = channel_groups(model, example, list(weights))
    # stream channel 2 (stem, conv2, their BatchNorms, conv1's and fc's inputs) and the block's
    # channel 0 (conv1, bn1, conv2's inputs)
    removed = [{2} if g.root == "stem" else {0} for g in groups]
    mask = remove_channels(Mask.ones_like(weights), groups, removed)
    mask.apply_(model)
    x = torch.randn(32, 1, 6, 6)
    with torch.no_grad():
        expected = model(x)
    assert float(model.bn0.bias[2].detach()) != 0  # the pruned channel's BatchNorm emits a constant
    small = slim_model(copy.deepcopy(model), example, mask)
    # 284 parameters; removed: stem row 9 + bn0 2 + conv1 54 (a 4x9 column, then a 3x9 row)
    # + bn1 2 + conv2 54 + bn2 2 + fc column 2 = 125
    assert parameter_count(model) == 284 and expected_removed(model, mask, groups) == 125
    assert parameter_count(small) == 159
    assert small.stem.weight.shape == (3, 1, 3, 3) and small.conv1.weight.shape == (2, 3, 3, 3)
    assert small.bn0.running_mean.shape == (3,) and small.fc.weight.shape == (2, 3)
    with torch.no_grad():
        got = small.eval()(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert float(expected.abs().max()) > 0.1


@needs_tp
def test_slim_resnet8_after_channel_pruning_equals_the_masked_model():
    from sparseavg.models.resnet_cifar import CifarResNet

    torch.manual_seed(0)
    model = _trained_bn(CifarResNet(8, 3, 10), (3, 8, 8))
    example = torch.randn(2, 3, 8, 8)
    mask, groups = _half_of_each_layer(model, example)
    mask.apply_(model)
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    small = slim_model(copy.deepcopy(model), example, mask).eval()
    # every width halved (16/32/64 -> 8/16/32): 78,042 parameters become 19,954 (stem 216,
    # blocks 576 + 576, 1,152 + 2,304 + 128, 4,608 + 9,216 + 512, BatchNorms 336, fc 330)
    assert parameter_count(model) == 78_042 and parameter_count(small) == 19_954
    assert expected_removed(model, mask, groups) == 78_042 - 19_954
    with torch.no_grad():
        torch.testing.assert_close(small(x), expected, rtol=0, atol=1e-5)


# -- the CLI ---------------------------------------------------------------------------------------


def _channel_run(parent: Path) -> Path:
    """A complete fake conv1d run (width 8) whose cycle 0 has half of each layer's channels
    pruned (layerwise) and BatchNorm statistics far from their defaults."""
    run = make_run(parent, CONV1D)
    config = read_run(run).config
    data = load_data(config, torch.device("cpu"))
    model = _trained_bn(make_model(config, data, 0), data.input_shape)
    mask, _ = _half_of_each_layer(model, torch.zeros(2, *data.input_shape))
    save_tensors(run / "cycle_00/combined.safetensors", mask.applied(model.state_dict()))
    mask.save(run / "cycle_00/mask.safetensors")
    RunDir(run, run_id=config.digest()).write_manifest(run / "cycle_00")
    return run


def _masked_logits(run: Path, x: torch.Tensor) -> torch.Tensor:
    config = read_run(run).config
    model = make_model(config, load_data(config, torch.device("cpu")), 0)
    model.load_state_dict(load_tensors(run / "cycle_00/combined.safetensors"))
    with torch.no_grad():
        return model.eval()(x)


@needs_tp
def test_export_slim_writes_a_program_plain_torch_runs_with_the_masked_outputs(
    tmp_path, capsys, monkeypatch
):
    import sparseavg.experiment.export as export

    monkeypatch.setattr(export, "onnx_available", lambda: False)  # no slim.onnx without onnx
    run = _channel_run(tmp_path / "runs")
    out = tmp_path / "export" / "m.safetensors"
    assert main(["export", str(run), "--cycle", "0", "--out", str(out), "--slim"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:-2]] == [
        "state",
        "mask",
        "sparse",
        "slim",
        "slim_program",
        "summary",
    ]
    # conv1d width 8 on (1, 40): 40 + 16 + 320 + 16 + 320 + 16 + fc 810 = 1,538; half of each
    # layer's 8 channels removed: 20 + 8 + 80 + 8 + 80 + 8 + fc 10 x 40 + 10 = 614
    assert lines[-1] == "slim model: 614 parameters (39.9 % of the dense 1,538)"
    summary = json.loads((tmp_path / "export" / "m.json").read_text())["slim"]
    assert summary["parameters"] == 614 and summary["dense_parameters"] == 1538
    assert sorted(summary["channels"].values(), key=str) == [{"kept": 4, "total": 8}] * 3
    program = torch.export.load(str(tmp_path / "export" / "m.slim.pt2")).module()
    test = load_data(read_run(run).config, torch.device("cpu")).test
    for batch in (100, 1):
        x = test.x[:batch]
        with torch.no_grad():
            got = program(x)
        torch.testing.assert_close(got, _masked_logits(run, x), rtol=0, atol=1e-5)
    slim_state = load_tensors(tmp_path / "export" / "m.slim.safetensors")
    assert slim_state["fc.weight"].shape == (10, 40)
    assert slim_state["features.0.weight"].shape == (4, 1, 5)


@needs_tp
def test_export_slim_onnx_gives_the_masked_logits(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    run = _channel_run(tmp_path / "runs")
    out = tmp_path / "m.safetensors"
    assert main(["export", str(run), "--cycle", "0", "--out", str(out), "--slim"]) == 0
    assert f"slim_onnx {tmp_path / 'm.slim.onnx'}" in capsys.readouterr().out.splitlines()
    cpu = ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(tmp_path / "m.slim.onnx"), providers=cpu)
    x = load_data(read_run(run).config, torch.device("cpu")).test.x[:50]
    [logits] = session.run(["logits"], {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), _masked_logits(run, x), rtol=0, atol=1e-5)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_slim_without_torch_pruning_names_the_extra_and_writes_nothing(
    tmp_path, capsys, monkeypatch
):
    import sparseavg.experiment.export as export

    run = make_run(tmp_path / "runs", sparsity=0.5)
    monkeypatch.setattr(export, "torch_pruning_available", lambda: False)
    before = _files(tmp_path)
    out = tmp_path / "m.safetensors"
    rc = main(["export", str(run), "--cycle", "0", "--out", str(out), "--slim"])
    out_text, err = capsys.readouterr()
    assert rc == 2 and out_text == "" and len(err.splitlines()) == 1
    assert 'pip install "sparseavg[structured]"' in err
    assert _files(tmp_path) == before


@needs_tp
def test_slim_export_into_the_run_directory_is_refused(tmp_path, capsys):
    run = _channel_run(tmp_path / "runs")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    rc = main(["export", str(run), "--cycle", "0", "--out", str(run / "m.safetensors"), "--slim"])
    assert rc == 2 and "inside the run directory" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_slim_paths_and_the_onnx_one_only_when_asked():
    from sparseavg.experiment.export import export_paths

    paths = export_paths("x/m.pt", slim=True)
    assert [p.name for p in paths.values()] == [
        "m.pt",
        "m.mask.safetensors",
        "m.sparse.safetensors",
        "m.slim.safetensors",
        "m.slim.pt2",
        "m.json",
    ]
    assert export_paths("x/m.pt", slim=True, slim_onnx=True)["slim_onnx"].name == "m.slim.onnx"
