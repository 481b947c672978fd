"""The Lightning callback: a mask kept through ``Trainer.fit``, SWA snapshots at epoch ends.
Skipped where Lightning is not installed (but the import error and ``import sparseavg``
without Lightning are checked everywhere)."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseavg import Mask

MASKED = ("net.0.weight", "net.2.weight")
EPOCHS = 4
BATCHES = 4  # per epoch


@pytest.fixture
def lightning():
    return pytest.importorskip("lightning")


def _module_class(lightning):
    class Tiny(lightning.LightningModule):
        """Linear -> tanh -> linear, MSE on random targets; records at each optimizer step
        whether the pruned gradients it is about to clip are zero, and its weights at each
        epoch end."""

        def __init__(self, optimizer: str, mask: Mask) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
            self.optimizer_name = optimizer
            self.mask = mask
            self.pruned_grads_zero: list[bool] = []
            self.epoch_weights: list[dict[str, torch.Tensor]] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            if self.optimizer_name == "sgd":
                return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
            return torch.optim.AdamW(self.parameters(), lr=0.01, weight_decay=0.1)

        def on_before_optimizer_step(self, optimizer):  # runs after the callbacks' hook
            params = dict(self.named_parameters())
            self.pruned_grads_zero.append(
                all(bool((params[n].grad[~self.mask[n]] == 0).all()) for n in self.mask)
            )

        def on_train_epoch_end(self):
            self.epoch_weights.append({n: p.detach().clone() for n, p in self.named_parameters()})

    return Tiny


def _mask() -> Mask:
    g = torch.Generator().manual_seed(3)
    shapes = {"net.0.weight": (8, 6), "net.2.weight": (3, 8)}
    alive = {n: torch.rand(s, generator=g) < 0.5 for n, s in shapes.items()}
    alive["net.2.weight"][0] = True  # every hidden unit keeps a path to the loss
    return Mask(alive)


def _loader():
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(16 * BATCHES, 6, generator=g), torch.randn(16 * BATCHES, 3, generator=g)
    )
    return torch.utils.data.DataLoader(data, batch_size=16)


def _fit(lightning, tmp_path, module, callbacks, **trainer_kwargs):
    settings = {
        "max_epochs": EPOCHS,
        "accelerator": "cpu",
        "devices": 1,
        "default_root_dir": tmp_path,
        "enable_checkpointing": False,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": callbacks,
    }
    trainer = lightning.Trainer(**{**settings, **trainer_kwargs})
    trainer.fit(module, _loader())
    return trainer


STATE_KEYS = {"sgd": {"momentum_buffer"}, "adamw": {"exp_avg", "exp_avg_sq"}}


@pytest.mark.parametrize(
    ("optimizer", "accumulate", "swa_start", "snapshots"),
    [("sgd", 1, 0.5, 2), ("adamw", 2, 1, 3)],
)
def test_fit_keeps_pruned_weights_and_state_zero_and_averages_from_swa_start(
    lightning, tmp_path, optimizer, accumulate, swa_start, snapshots
):
    from sparseavg.integrations.lightning import SparseTraining

    mask = _mask()
    module = _module_class(lightning)(optimizer, mask)
    start = {n: p.detach().clone() for n, p in module.named_parameters()}
    callback = SparseTraining(mask, swa_start=swa_start)
    trainer = _fit(
        lightning,
        tmp_path,
        module,
        [callback],
        accumulate_grad_batches=accumulate,
        gradient_clip_val=0.5,
    )

    params = dict(module.named_parameters())
    (opt,) = trainer.optimizers
    for n in mask:
        dead = ~mask[n]
        assert bool((params[n][dead] == 0).all()), n
        state = opt.state[params[n]]
        assert {k for k, v in state.items() if v.shape == params[n].shape} == STATE_KEYS[optimizer]
        for key in STATE_KEYS[optimizer]:
            assert bool((state[key][dead] == 0).all()), (n, key)
        assert bool((params[n][mask[n]] != start[n][mask[n]]).all()), n  # survivors trained
    # the hook ran at every optimizer step, and saw zero pruned gradients before clipping
    assert len(module.pruned_grads_zero) == EPOCHS * BATCHES // accumulate
    assert all(module.pruned_grads_zero)

    # SWA: one snapshot per epoch end from swa_start on, the mean of those weights
    assert callback.swa_start_epoch == EPOCHS - snapshots
    assert callback.num_snapshots == snapshots
    averaged = callback.averaged_state_dict()
    assert set(averaged) == set(params)
    for n, value in averaged.items():
        expected = torch.stack([w[n] for w in module.epoch_weights[-snapshots:]]).mean(0)
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
        if n in mask:
            assert bool((value[~mask[n]] == 0).all()), n
    assert not torch.equal(averaged["net.0.weight"], params["net.0.weight"])

    callback.load_averaged(module)
    for n, p in module.named_parameters():
        assert torch.equal(p, averaged[n])

    # the hooks are gone after fit: a step now revives the pruned weights
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert bool((params["net.0.weight"][~mask["net.0.weight"]] != 0).all())


def test_without_swa_there_is_no_average(lightning, tmp_path):
    from sparseavg.integrations.lightning import SparseTraining

    mask = _mask()
    module = _module_class(lightning)("sgd", mask)
    callback = SparseTraining(mask)
    _fit(lightning, tmp_path, module, [callback], max_steps=2)
    assert callback.num_snapshots == 0 and callback.swa_start_epoch is None
    with pytest.raises(RuntimeError, match="no SWA snapshot yet"):
        callback.averaged_state_dict()
    weight = dict(module.named_parameters())["net.0.weight"]
    assert bool((weight[~mask["net.0.weight"]] == 0).all())


def test_bad_arguments_and_a_mask_the_optimizers_do_not_hold(lightning, tmp_path):
    from sparseavg import MaskError
    from sparseavg.integrations.lightning import SparseTraining

    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        SparseTraining(_mask(), swa_start=1.5)
    with pytest.raises(ValueError, match=">= 0"):
        SparseTraining(_mask(), swa_start=-1)
    with pytest.raises(TypeError, match="swa_start"):
        SparseTraining(_mask(), swa_start=True)
    with pytest.raises(TypeError, match="swa_start"):
        SparseTraining(_mask(), swa_start="0.5")  # type: ignore[arg-type]

    class FirstLayerOnly(_module_class(lightning)):
        def configure_optimizers(self):
            return torch.optim.SGD(self.net[0].parameters(), lr=0.1)

    module = FirstLayerOnly("sgd", _mask())
    with pytest.raises(MaskError, match=r"'net\.2\.weight' is not a parameter of any optimizer"):
        _fit(lightning, tmp_path, module, [SparseTraining(_mask())], max_steps=1)

    wrong = Mask({"fc.weight": torch.ones(3, 8, dtype=torch.bool)})
    module = _module_class(lightning)("sgd", _mask())
    with pytest.raises(MaskError, match=r"'fc\.weight' is not a parameter of the model"):
        _fit(lightning, tmp_path, module, [SparseTraining(wrong)], max_steps=1)

    module = _module_class(lightning)("sgd", _mask())
    with pytest.raises(ValueError, match="fraction of max_epochs"):
        _fit(lightning, tmp_path, module, [SparseTraining(_mask(), swa_start=0.5)], max_epochs=-1)


def test_the_module_names_pip_install_lightning_when_lightning_is_missing(monkeypatch):
    for name in ("lightning", "lightning.pytorch"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import lightning` fail
    monkeypatch.delitem(sys.modules, "sparseavg.integrations.lightning", raising=False)
    with pytest.raises(ImportError, match="pip install lightning"):
        import sparseavg.integrations.lightning  # noqa: F401


def test_import_sparseavg_does_not_import_lightning():
    code = "import sys, sparseavg; print(sorted(m for m in sys.modules if 'lightning' in m))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
