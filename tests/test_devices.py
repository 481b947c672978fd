"""Each device path, on the CPU and (where torch sees one) on CUDA: ``pytest -m device`` runs
them, ``benchmarks/gpu_check.py`` on a GPU machine. The stacked executor's check is
``test_stacked.py::test_float64_stacked_equals_sequential``, parametrized over the same devices.

The CPU cases pin the same numbers as CUDA's against an independent reference (float64, or a
hand computation), so that they fail when the path breaks on the CPU too. The CUDA tolerances:
cuDNN convolutions use TF32 by default (10 mantissa bits, about 5e-4 relative per product),
so float32 results on CUDA agree with float64 ones to ``TF32``; the CPU ones to ``F32``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine_helpers import tiny_run
from helpers import DEVICES, tiny_net, tiny_split
from sparseavg.analysis import hessian_trace, linear_path
from sparseavg.averaging import recalibrate_bn
from sparseavg.cli.main import main
from sparseavg.data import Split
from sparseavg.experiment.runinfo import read_run
from sparseavg.experiment.task import load_data, make_model
from sparseavg.pruning import Mask, SemiStructuredError, load_sparse, nm_prune, to_semi_structured
from sparseavg.utils.files import load_tensors
from sparseavg.utils.state import clone_state
from test_dst_recipes import _Checkpoints

F32 = {"atol": 1e-5, "rtol": 1e-5}
TF32 = {"atol": 3e-3, "rtol": 3e-3}


def tol(device: str) -> dict[str, float]:
    return F32 if device == "cpu" else TF32


# -- training through the engine -----------------------------------------------------------------


@pytest.fixture(scope="module", params=DEVICES)
def trained(request, tmp_path_factory):
    """A tiny IMP run (conv1d width 8 on MNIST-1D, 1 epoch, a dense cycle 0 and a pruned
    cycle 1) with ``execution.device`` the device and ``train.precision``/``channels_last``
    left ``auto``; notes every epoch checkpoint and the bf16 flag each ``train`` ran with."""
    import sparseavg.training.loop as loop

    device = request.param
    bf16: list[bool] = []
    real = loop._autocast
    with pytest.MonkeyPatch.context() as mp:
        notes = _Checkpoints(mp)

        def spy(on: torch.device, use_bf16: bool):
            assert on.type == device
            bf16.append(use_bf16)
            return real(on, use_bf16)

        mp.setattr(loop, "_autocast", spy)
        values = {"recipe": "imp", "train": {"epochs": 1}, "execution": {"device": device}}
        run = tiny_run(tmp_path_factory.mktemp(f"trained-{device}"), values)
    return device, run, notes.seen, bf16


def test_training_on_the_device_keeps_pruned_weights_and_momentum_exactly_zero(trained):
    """Cycle 1 trains under its mask (20 % of the weights pruned): its epoch checkpoint's
    pruned weights and their SGD momentum (copied to the CPU as ``train`` checkpoints them) are
    exactly 0, on CUDA under bf16 autocast, which ``auto`` turns on there only."""
    device, run, seen, bf16 = trained
    # cycle 0 to the rewind point, cycle 0 on, cycle 1
    assert bf16 == [device == "cuda"] * 3
    assert [(n["cycle"], n["step"]) for n in seen] == [(0, 57), (1, 57)]
    (checkpoint,) = [n for n in seen if n["cycle"] == 1]
    mask = Mask.load(run / "cycle_01" / "mask.safetensors")
    assert mask.num_pruned == round(0.2 * mask.num_total)
    for name, keep in mask.items():
        weight, momentum = checkpoint["model"][name], checkpoint["momentum"][name]
        assert weight.device.type == momentum.device.type == "cpu", name  # as train() keeps it
        assert not weight[~keep].any(), name
        assert not momentum[~keep].any(), name
        assert weight[keep].all() and momentum[keep].any(), name  # it did train
    final = load_tensors(run / "cycle_01" / "combined.safetensors")
    assert all(not final[n][~keep].any() for n, keep in mask.items())


def test_export_of_a_run_trained_on_the_device_loads_on_the_cpu(trained, tmp_path, capsys):
    _, run, _, _ = trained
    out = tmp_path / "export" / "model.safetensors"
    assert main(["export", str(run), "--cycle", "1", "--out", str(out)]) == 0
    state = load_tensors(run / "cycle_01" / "combined.safetensors")
    dense, sparse = load_tensors(out), load_sparse(out.with_name("model.sparse.safetensors"))
    assert dense.keys() == sparse.keys() == state.keys()
    for k in state:
        assert dense[k].device.type == sparse[k].device.type == "cpu", k
        assert torch.equal(dense[k], state[k]) and torch.equal(sparse[k], state[k]), k
    config = read_run(run).config
    model = make_model(config, load_data(config, torch.device("cpu")), 0)
    model.load_state_dict(dense)  # loads into a CPU model of the run's architecture


@pytest.mark.parametrize("device", DEVICES)
def test_export_slim_of_a_channel_run_trained_on_the_device(device, tmp_path, capsys, monkeypatch):
    """Channel masks trained on the device; the slim program runs on the CPU and gives the
    masked model's logits (computed on the CPU from the run's weights)."""
    pytest.importorskip("torch_pruning", reason="export --slim needs torch-pruning")
    import sparseavg.experiment.export as export

    monkeypatch.setattr(export, "onnx_available", lambda: False)  # no slim.onnx: not the point
    values = {
        "recipe": "imp",
        "train": {"epochs": 1},
        "pruning": {"granularity": "channel"},
        "execution": {"device": device},
    }
    run = tiny_run(tmp_path / "runs", values)
    out = tmp_path / "export" / "m.safetensors"
    assert main(["export", str(run), "--cycle", "1", "--out", str(out), "--slim"]) == 0
    config = read_run(run).config
    data = load_data(config, torch.device("cpu"))
    model = make_model(config, data, 0)
    model.load_state_dict(load_tensors(run / "cycle_01" / "combined.safetensors"))
    program = torch.export.load(str(out.with_name("m.slim.pt2"))).module()
    x = data.test.x[:64]
    with torch.no_grad():
        torch.testing.assert_close(program(x), model.eval()(x), rtol=0, atol=1e-5)


# -- BatchNorm recalibration and the analyses ----------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_bn_recalibration_on_the_device_is_the_average_over_the_batches(device):
    """Three batches of 32: the running mean is the mean of the batches' channel means and the
    running variance the mean of their unbiased variances, computed by hand in float64."""
    split = tiny_split(96, seed=1)
    model = tiny_net(0).to(device)
    recalibrate_bn(model, split, batch_size=32)
    reference = tiny_net(0).double()
    with torch.no_grad():
        z = reference.conv(split.x.double()).view(3, 32, 4, 64).transpose(1, 2).reshape(3, 4, -1)
    mean, var = z.mean(dim=2).mean(dim=0), z.var(dim=2).mean(dim=0)
    assert model.bn.running_mean.device.type == device
    assert int(model.bn.num_batches_tracked) == 3
    torch.testing.assert_close(model.bn.running_mean.cpu().double(), mean, **tol(device))
    torch.testing.assert_close(model.bn.running_var.cpu().double(), var, **tol(device))


def _double(split: Split) -> Split:
    return Split(split.x.double(), split.y, split.augmentation)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_path_on_the_device_agrees_with_float64_on_the_cpu(device):
    train, test = tiny_split(64, seed=1), tiny_split(48, seed=2)
    a, b = clone_state(tiny_net(3)), clone_state(tiny_net(4))
    kw = dict(points=3, bn_batches=2, batch_size=16)
    workspace = tiny_net(0).to(device)
    before = clone_state(workspace)
    path = linear_path(workspace, a, b, eval_data=test, recalibrate=train, **kw)
    ref = linear_path(
        tiny_net(0).double(),
        {k: v.double() if v.is_floating_point() else v for k, v in a.items()},
        {k: v.double() if v.is_floating_point() else v for k, v in b.items()},
        eval_data=_double(test),
        recalibrate=_double(train),
        **kw,
    )
    torch.testing.assert_close(list(path.losses), list(ref.losses), **tol(device))
    # 48 samples: no prediction of these random nets lies within TF32's error of a tie
    assert path.errors == ref.errors
    assert path.loss_barrier == pytest.approx(ref.loss_barrier, abs=tol(device)["atol"] * 4)
    assert all(torch.equal(t, before[k]) for k, t in clone_state(workspace).items())
    assert next(workspace.parameters()).device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_hessian_trace_on_the_device_agrees_with_float64_on_the_cpu(device):
    """The same Rademacher probes (drawn on the CPU from the seed, then moved): the estimate
    and its standard error agree with float64 on the CPU."""
    data = tiny_split(64, seed=1)
    model = tiny_net(0)
    kw = dict(probes=3, batches=2, batch_size=32, seed=5)
    keep = Mask({"fc.weight": torch.arange(4 * 8 * 8 * 3).view(3, -1) % 3 != 0})
    est = hessian_trace(model.to(device), clone_state(model), data, mask=keep, **kw)
    double = tiny_net(0).double()
    ref = hessian_trace(double, clone_state(double), _double(data), mask=keep, **kw)
    assert ref.mean > 0
    assert est.mean == pytest.approx(ref.mean, rel=tol(device)["rtol"] * 3)
    assert est.stderr == pytest.approx(ref.stderr, rel=tol(device)["rtol"] * 30)


# -- 2:4 semi-structured weights -----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_two_four_weights_on_the_device(device):
    """On CUDA (compute capability >= 8.0): both 2:4-pruned float16 linear layers convert and
    give the dense masked model's outputs; on the CPU the one-line refusal, nothing changed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))
    weights = {n: p.detach() for n, p in model.named_parameters() if p.dim() == 2}
    mask = nm_prune(weights, Mask.ones_like(weights), 2, 4)
    model.load_state_dict(mask.applied(model.state_dict()))
    model = model.half().to(device).eval()
    if device == "cpu":
        with pytest.raises(SemiStructuredError, match=r"CUDA (GPU|device)"):
            to_semi_structured(model)
        assert model[0].weight.layout == torch.strided and model[0].weight.device.type == "cpu"
        return
    capability = torch.cuda.get_device_capability()
    if capability < (8, 0):
        pytest.skip(f"2:4 kernels need compute capability >= 8.0; this GPU has {capability}")
    x = torch.randn(64, 128, device=device, dtype=torch.float16)
    with torch.no_grad():
        dense = model(x)
        done = to_semi_structured(model)
        sparse = model(x)
    assert done.converted == ("0", "2") and done.dense == {}
    assert type(model[0].weight).__name__.startswith("SparseSemiStructuredTensor")
    torch.testing.assert_close(sparse, dense, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_particles_in_lock_step_on_the_device_share_one_mask(device, tmp_path):
    """swamp-rigl's lock step (the shared drop/grow on the particles' mean, the first half as
    one particle) on the device: every particle ends under the run's mask with ERK's counts,
    the pruned weights exactly 0, and the average keeps the mask."""
    values = {
        "recipe": "swamp-rigl",
        "train": {"epochs": 2, "batch_size": 512},
        "pruning": {"cycles": 0, "rewind_epochs": 0.0},
        "ingredients": {"count": 2},
        "execution": {"device": device},
    }
    run = tiny_run(tmp_path, values)
    cycle = run / "cycle_00"
    mask = Mask.load(cycle / "mask.safetensors")
    assert {n: int(t.sum()) for n, t in mask.items()} == {
        "features.3.weight": 23, "features.6.weight": 23, "fc.weight": 99
    }  # fmt: skip
    for k in (0, 1):
        assert Mask.load(cycle / f"ingredient_{k}" / "mask.safetensors") == mask
        final = load_tensors(cycle / f"ingredient_{k}" / "final.safetensors")
        assert all(not final[n][~keep].any() for n, keep in mask.items())
    combined = load_tensors(cycle / "combined.safetensors")
    assert all(not combined[n][~keep].any() for n, keep in mask.items())


@pytest.mark.parametrize("device", DEVICES)
def test_dpf_feedback_hooks_on_the_device_step_the_dense_weights(device):
    """AttachedFeedback on the device: the forward runs at w * m (a pruned input weight
    contributes nothing), the step moves the pruned weight's dense value by -lr * g, and
    removing the hooks leaves the dense weights in the model."""
    from sparseavg.pruning.dpf import DPFSchedule
    from sparseavg.training import AttachedFeedback

    model = nn.Linear(3, 1, bias=False).to(device)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    mask = Mask({"weight": torch.tensor([[True, False, True]], device=device)})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hooks = AttachedFeedback(model, mask, opt, DPFSchedule((), initial=1 / 3), 10)
    x = torch.tensor([[1.0, 1.0, 1.0]], device=device)
    out = model(x)
    assert out.item() == 4.0  # 1 + 3: the pruned 2 is out of the forward
    out.sum().backward()  # d out / d w = x = 1 for every coordinate, the pruned one too
    opt.step()
    hooks.remove()
    expected = torch.tensor([[1.0, 2.0, 3.0]]) - torch.tensor(0.1)  # float32 w - lr * 1
    assert torch.equal(model.weight.detach().cpu(), expected)
