"""``attach``: hooks on ``optimizer.step()`` keep pruned weights and their optimizer state at
exactly zero, whoever calls ``step``."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparseavg
from sparseavg import Mask, MaskEnforcer, MaskError, attach
from sparseavg.training import AttachedMask

MASKED = ("0.weight", "2.weight")
STEPS = 5


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _mask(model: nn.Module) -> Mask:
    """About half of each weight matrix pruned, biases not covered. Output 0 keeps all its
    inputs, so every hidden unit, and each of its first-layer weights, still gets a gradient."""
    g = torch.Generator().manual_seed(3)
    params = dict(model.named_parameters())
    alive = {n: torch.rand(params[n].shape, generator=g) < 0.5 for n in MASKED}
    alive["2.weight"][0] = True
    mask = Mask(alive)
    for n in MASKED:  # the test needs both kinds in every layer
        assert 0 < int(mask[n].sum()) < mask[n].numel()
    return mask


def _batches(n: int = STEPS, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)) for _ in range(n)]


def _backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> None:
    (F.mse_loss(model(x), y) * scale).backward()


def _assert_every_gradient_nonzero(model: nn.Module) -> None:
    """The premise: every weight, pruned or not, gets a gradient that would move it."""
    params = dict(model.named_parameters())
    for n in MASKED:
        assert bool((params[n].grad != 0).all()), n


def _train(model, optimizer, batches, enforcer: MaskEnforcer | None = None) -> None:
    """Plain steps; with ``enforcer``, masked by hand around ``step`` as ``train()`` does."""
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        _backward(model, x, y)
        _assert_every_gradient_nonzero(model)
        if enforcer is not None:
            enforcer.mask_gradients()
        optimizer.step()
        if enforcer is not None:
            enforcer.mask_weights()


def _assert_pruned_zero(model: nn.Module, mask: Mask, optimizer, state_keys: set[str]) -> None:
    params = dict(model.named_parameters())
    for n in mask:
        p, dead = params[n], ~mask[n]
        assert bool((p[dead] == 0).all()), n
        state = optimizer.state[p]
        shaped = {k for k, v in state.items() if torch.is_tensor(v) and v.shape == p.shape}
        assert shaped == state_keys, n  # the state the test means to check is there
        for key in shaped:
            assert bool((state[key][dead] == 0).all()), (n, key)


OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    "sgd-nesterov": (
        torch.optim.SGD,
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    ),
    "adam-amsgrad": (torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.01, "amsgrad": True}),
    "adamw": (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
}
STATE_KEYS = {
    "sgd": {"momentum_buffer"},
    "sgd-nesterov": {"momentum_buffer"},
    "adam-amsgrad": {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"},
    "adamw": {"exp_avg", "exp_avg_sq"},
}
VARIANTS = {"foreach": {"foreach": True}, "for-loop": {"foreach": False}, "fused": {"fused": True}}


def _optimizer(name: str, variant: str, model: nn.Module) -> torch.optim.Optimizer:
    cls, kwargs = OPTIMIZERS[name]
    return cls(model.parameters(), **kwargs, **VARIANTS[variant])


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_pruned_weights_and_their_state_stay_exactly_zero(name, variant):
    model = _model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = _mask(model)
    optimizer = _optimizer(name, variant, model)
    handle = attach(model, mask, optimizer)
    assert handle.attached
    _train(model, optimizer, _batches())
    _assert_pruned_zero(model, mask, optimizer, STATE_KEYS[name])
    for n, p in model.named_parameters():  # every surviving weight (and bias) trained
        alive = mask[n] if n in mask else torch.ones_like(p, dtype=torch.bool)
        assert bool((p[alive] != start[n][alive]).all()), n

    # and the same numbers, bit for bit, as masking by hand around step (as train() does)
    reference = _model()
    ref_optimizer = _optimizer(name, variant, reference)
    mask.apply_(reference)
    _train(reference, ref_optimizer, _batches(), MaskEnforcer(reference, mask))
    for (n, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q), n


def test_without_attach_the_same_steps_revive_pruned_weights_and_state():
    """The control for the test above: its model, mask and steps do revive pruned weights."""
    model = _model()
    mask = _mask(model)
    mask.apply_(model)
    optimizer = _optimizer("adamw", "foreach", model)
    _train(model, optimizer, _batches())
    params = dict(model.named_parameters())
    for n in mask:
        dead = ~mask[n]
        assert bool((params[n][dead] != 0).all())
        assert bool((optimizer.state[params[n]]["exp_avg"][dead] != 0).all())


def test_remove_stops_the_masking_and_is_idempotent():
    model = _model()
    mask = _mask(model)
    optimizer = _optimizer("sgd", "foreach", model)
    handle = attach(model, mask, optimizer)
    _train(model, optimizer, _batches(2))
    params = dict(model.named_parameters())
    assert bool((params["0.weight"][~mask["0.weight"]] == 0).all())
    handle.remove()
    handle.remove()
    assert not handle.attached
    _train(model, optimizer, _batches(1, seed=2))
    for n in mask:
        assert bool((params[n][~mask[n]] != 0).all()), n  # revived: nothing masks any more


def test_gradients_masked_on_backward_until_remove():
    """mask_gradients_on_backward: right after backward (before any step) the pruned
    weights' gradients are exactly 0 and the others untouched; remove() detaches it too."""
    model = _model()
    mask = _mask(model)
    handle = attach(model, mask, _optimizer("sgd", "foreach", model))
    handle.mask_gradients_on_backward()
    params = dict(model.named_parameters())
    (x, y), reference = _batches(1)[0], _model()
    ref = dict(reference.named_parameters())
    with torch.no_grad():  # the weights attach has zeroed
        for n in MASKED:
            ref[n].mul_(mask[n])
    _backward(model, x, y)
    _backward(reference, x, y)
    for n in MASKED:
        assert torch.equal(params[n].grad, ref[n].grad * mask[n]), n
    handle.remove()
    model.zero_grad(set_to_none=True)
    _backward(model, x, y)
    _assert_every_gradient_nonzero(model)
    with pytest.raises(RuntimeError, match="removed"):
        handle.mask_gradients_on_backward()


def test_tighten_zeroes_what_the_new_mask_prunes_and_the_hooks_follow_it():
    """After two steps under the first mask, tighten to one that also prunes the first alive
    weight of every masked tensor: that weight and its momentum are 0 at once, and stay 0
    through two more steps, its gradient masked on backward too."""
    model = _model()
    mask = _mask(model)
    opt = _optimizer("sgd", "foreach", model)
    handle = attach(model, mask, opt)
    for x, y in _batches(2):
        _backward(model, x, y)
        opt.step()
        opt.zero_grad(set_to_none=True)
    params = dict(model.named_parameters())
    tighter = {}
    for n in MASKED:
        flat = mask[n].flatten().clone()
        flat[int(flat.nonzero()[0])] = False
        tighter[n] = flat.view(mask[n].shape)
    tighter_mask = Mask(tighter)
    handle.mask_gradients_on_backward()
    handle.tighten(tighter_mask)
    assert handle.mask is tighter_mask
    for n in MASKED:
        newly = mask[n] & ~tighter[n]
        assert int(newly.sum()) == 1 and params[n][newly].abs().sum() == 0, n
        assert opt.state[params[n]]["momentum_buffer"][newly].abs().sum() == 0, n
    for x, y in _batches(2):
        _backward(model, x, y)
        for n in MASKED:
            assert not params[n].grad[~tighter[n]].any(), n
        opt.step()
        opt.zero_grad(set_to_none=True)
    for n in MASKED:
        assert not params[n][~tighter[n]].any(), n
        assert bool((params[n][tighter[n]] != 0).all()), n
    with pytest.raises(MaskError, match="name the attached mask's parameters"):
        handle.tighten(Mask({MASKED[0]: tighter[MASKED[0]]}))
    handle.remove()
    with pytest.raises(RuntimeError, match="removed"):
        handle.tighten(tighter_mask)


def test_as_a_context_manager_it_detaches_on_exit():
    model = _model()
    mask = _mask(model)
    optimizer = _optimizer("sgd", "foreach", model)
    with attach(model, mask, optimizer) as handle:
        assert isinstance(handle, AttachedMask) and handle.attached
        _train(model, optimizer, _batches(1))
    assert not handle.attached
    assert "removed" in repr(handle)
    _train(model, optimizer, _batches(1, seed=2))
    weight = dict(model.named_parameters())["2.weight"]
    assert bool((weight[~mask["2.weight"]] != 0).all())


@pytest.mark.parametrize("name", ["sgd", "adam-amsgrad"])
def test_attach_mid_training_zeros_existing_weights_and_state(name):
    model = _model()
    optimizer = _optimizer(name, "foreach", model)
    _train(model, optimizer, _batches(3))  # dense: momentum / moments nonzero everywhere
    params = dict(model.named_parameters())
    before = {n: {k: v.clone() for k, v in optimizer.state[params[n]].items()} for n in MASKED}
    weights = {n: params[n].detach().clone() for n in MASKED}
    mask = _mask(model)
    for n in MASKED:
        for key in STATE_KEYS[name]:
            assert bool((before[n][key] != 0).all())

    attach(model, mask, optimizer)
    for n in MASKED:  # at once: pruned entries zero, surviving ones untouched
        dead, alive = ~mask[n], mask[n]
        assert bool((params[n][dead] == 0).all())
        assert torch.equal(params[n][alive], weights[n][alive])
        state = optimizer.state[params[n]]
        for key in STATE_KEYS[name]:
            assert bool((state[key][dead] == 0).all())
            assert torch.equal(state[key][alive], before[n][key][alive])
        if "step" in state:  # Adam's counter is not a tensor shaped like the weight
            assert torch.equal(state["step"], before[n]["step"])
    _train(model, optimizer, _batches(3, seed=4))
    _assert_pruned_zero(model, mask, optimizer, STATE_KEYS[name])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradient_accumulation_masks_the_summed_gradients(variant):
    micro = 3
    model = _model()
    mask = _mask(model)
    optimizer = _optimizer("adamw", variant, model)
    attach(model, mask, optimizer)
    reference = _model()
    mask.apply_(reference)
    ref_optimizer = _optimizer("adamw", variant, reference)
    enforcer = MaskEnforcer(reference, mask)
    batches = _batches(STEPS * micro)
    for i in range(STEPS):
        for net in (model, reference):
            net.zero_grad(set_to_none=True)
            for x, y in batches[i * micro : (i + 1) * micro]:
                _backward(net, x, y, scale=1 / micro)
            _assert_every_gradient_nonzero(net)
        optimizer.step()
        enforcer.mask_gradients()
        ref_optimizer.step()
        enforcer.mask_weights()
    _assert_pruned_zero(model, mask, optimizer, STATE_KEYS["adamw"])
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_closure_passed_to_step_has_its_gradients_masked():
    """Lightning's automatic optimization computes the gradients inside ``step(closure)``:
    after the pre-hook. The hook wraps the closure, so momentum still never sees them."""
    model = _model()
    mask = _mask(model)
    optimizer = _optimizer("sgd", "foreach", model)
    attach(model, mask, optimizer)
    reference = _model()
    mask.apply_(reference)
    ref_optimizer = _optimizer("sgd", "foreach", reference)
    enforcer = MaskEnforcer(reference, mask)
    for i, (x, y) in enumerate(_batches()):

        def closure(x=x, y=y):
            optimizer.zero_grad(set_to_none=True)
            loss = F.mse_loss(model(x), y)
            loss.backward()
            _assert_every_gradient_nonzero(model)
            return loss

        loss = optimizer.step(closure) if i % 2 else optimizer.step(closure=closure)
        assert loss is not None  # the closure's loss comes back through the wrapper
        _train(reference, ref_optimizer, [(x, y)], enforcer)
    params = dict(model.named_parameters())
    for n in mask:  # momentum built from masked gradients: zero before the post-hook too
        assert bool((params[n].grad[~mask[n]] == 0).all())
    _assert_pruned_zero(model, mask, optimizer, STATE_KEYS["sgd"])
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["sgd", "adam-amsgrad"])
def test_gradients_changed_after_the_pre_hook_still_leave_weights_and_state_zero(name):
    """Another step pre-hook registered later (gradient noise, say) runs after the masking:
    the post-hook zeros what it put into the pruned weights and their state."""
    model = _model()
    mask = _mask(model)
    optimizer = _optimizer(name, "foreach", model)
    attach(model, mask, optimizer)
    g = torch.Generator().manual_seed(5)

    def add_noise(*_):
        for p in model.parameters():
            p.grad.add_(torch.randn(p.shape, generator=g))

    optimizer.register_step_pre_hook(add_noise)
    _train(model, optimizer, _batches())
    _assert_pruned_zero(model, mask, optimizer, STATE_KEYS[name])


SCALE = 2.0**10  # a power of two: scaling and unscaling are exact in float32


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_grad_scaler_steps_match_unscaled_steps_and_hooks_see_what_step_sees(variant):
    model = _model()
    mask = _mask(model)
    optimizer = _optimizer("adamw", variant, model)
    attach(model, mask, optimizer)
    seen: list[torch.Tensor] = []
    # runs after attach's pre-hook: the gradient step() is handed
    optimizer.register_step_pre_hook(
        lambda *_: seen.append(dict(model.named_parameters())["2.weight"].grad.clone())
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE, growth_interval=1000)
    reference = _model()
    mask.apply_(reference)
    ref_optimizer = _optimizer("adamw", variant, reference)
    enforcer = MaskEnforcer(reference, mask)
    for x, y in _batches():
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(F.mse_loss(model(x), y)).backward()
        scaler.step(optimizer)
        scaler.update()
        _train(reference, ref_optimizer, [(x, y)], enforcer)
        expected = dict(reference.named_parameters())["2.weight"].grad
        # the unscaled path unscales before step(); fused optimizers unscale inside their
        # kernel, so their hooks see scaled gradients (the 0/1 mask does not care)
        factor = SCALE if variant == "fused" else 1.0
        assert torch.equal(seen[-1], expected * factor)
    assert scaler.get_scale() == SCALE  # no step was skipped
    _assert_pruned_zero(model, mask, optimizer, STATE_KEYS["adamw"])
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("where", ["pruned", "alive"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_step_the_grad_scaler_skips_leaves_everything_as_it_was(variant, where):
    model = _model()
    mask = _mask(model)
    optimizer = _optimizer("adamw", variant, model)
    attach(model, mask, optimizer)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    batches = _batches(3)
    for x, y in batches[:2]:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(F.mse_loss(model(x), y)).backward()
        scaler.step(optimizer)
        scaler.update()
    params = dict(model.named_parameters())
    weights = {n: p.detach().clone() for n, p in params.items()}
    state = {n: {k: v.clone() for k, v in optimizer.state[p].items()} for n, p in params.items()}

    x, y = batches[2]
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(F.mse_loss(model(x), y)).backward()
    grad, keep = params["2.weight"].grad, mask["2.weight"]
    index = (~keep if where == "pruned" else keep).nonzero()[0].tolist()
    grad[tuple(index)] = float("inf")
    scaler.step(optimizer)
    scaler.update()

    assert scaler.get_scale() == SCALE / 2  # the step was skipped
    for n, p in params.items():
        assert torch.equal(p, weights[n]), n
        for key, value in optimizer.state[p].items():
            assert torch.equal(value, state[n][key]), (n, key)
    _assert_pruned_zero(model, mask, optimizer, STATE_KEYS["adamw"])


def test_a_wrapper_whose_step_runs_no_hooks_is_unwrapped():
    """Lightning's ``LightningOptimizer`` and accelerate's ``AcceleratedOptimizer`` hold the
    torch optimizer and call its ``step``; hooks registered on the wrapper would never fire."""

    class Wrapper(torch.optim.Optimizer):  # as AcceleratedOptimizer: no Optimizer.__init__
        def __init__(self, optimizer):
            self.optimizer = optimizer

        def zero_grad(self, set_to_none=True):
            self.optimizer.zero_grad(set_to_none=set_to_none)

        def step(self, closure=None):
            return self.optimizer.step(closure)

    model = _model()
    mask = _mask(model)
    inner = _optimizer("sgd", "foreach", model)
    wrapper = Wrapper(inner)
    assert not getattr(Wrapper.step, "hooked", False)  # its own hooks would never run
    handle = attach(model, mask, wrapper)  # type: ignore[arg-type]
    assert handle.optimizer is inner
    _train(model, wrapper, _batches())
    _assert_pruned_zero(model, mask, inner, STATE_KEYS["sgd"])


def test_bad_inputs_name_the_problem():
    model = _model()
    mask = _mask(model)
    optimizer = _optimizer("sgd", "foreach", model)
    with pytest.raises(MaskError, match=r"'fc\.weight' is not a parameter of the model"):
        attach(model, {"fc.weight": torch.ones(3, 8, dtype=torch.bool)}, optimizer)
    with pytest.raises(MaskError, match=r"'0\.weight' has shape \(6, 8\)"):
        attach(model, {"0.weight": torch.ones(6, 8, dtype=torch.bool)}, optimizer)
    with pytest.raises(MaskError, match=r"torch\.bool"):
        attach(model, {"0.weight": torch.ones(8, 6)}, optimizer)
    only_last = torch.optim.SGD(model[2].parameters(), lr=0.1)
    with pytest.raises(MaskError, match=r"mask entry '0\.weight' is not a parameter of the optim"):
        attach(model, mask, only_last)
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        attach(model, mask, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        attach(dict(model.named_parameters()), mask, optimizer)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mask must be"):
        attach(model, None, optimizer)  # type: ignore[arg-type]
    # a failed attach registers nothing: the weights of the model above were not touched
    assert bool((model[0].weight != 0).all())


def test_attach_is_exported():
    assert sparseavg.attach is attach
    assert sparseavg.training.attach is attach
    assert "attach" in sparseavg.__all__ and "attach" in sparseavg.training.__all__
