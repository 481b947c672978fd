"""The stacked executor trains K ingredients as one vmapped model and must give what the
sequential executor gives: same final weights, SWA averages, BatchNorm statistics, losses,
checkpoints (interchangeable between the two), divergence handling and fallbacks.

Tolerances: only the order of floating-point sums differs (one grouped convolution or one
batched matrix product instead of K), so float64 runs agree to ``atol = 1e-12`` and float32 runs
to ``atol = 1e-6`` after a few dozen steps; the recorded epoch losses (float32, as ``train``
keeps them) agree to the float32 tolerance in both.
"""

from __future__ import annotations

import copy
import dataclasses
import io
from collections.abc import Sequence

import pytest
import torch
from torch import nn

from helpers import DEVICES, TinyConvNet
from sparseavg.data import Augmentation, Split
from sparseavg.experiment.task import DataTask
from sparseavg.parallel import Job, LoopTrainer, Outcome, Sequential, Stacked, Work
from sparseavg.pruning import Mask
from sparseavg.training import DivergenceError, EpochLog, TrainResult, TrainSettings, TrainState
from sparseavg.utils.state import clone_state

F64 = {"atol": 1e-12, "rtol": 0.0}
# float64 on CUDA: other kernels (cuDNN, cuBLAS) sum in other orders; 20 steps stay within 1e-9
F64_CUDA = {"atol": 1e-9, "rtol": 0.0}
F32 = {"atol": 1e-6, "rtol": 1e-5}
LOSS = {"atol": 1e-6, "rtol": 1e-6}  # epoch losses are float32 in both executors


# -- a recording Hooks ---------------------------------------------------------------------------


class StopTraining(Exception):
    """Raised by a checkpoint hook to interrupt a run, as a killed process would."""


class Recorder:
    """``Hooks`` that keep everything: checkpoints (through ``torch.save`` and a
    ``weights_only`` load, as the run directory keeps them), results, outcomes, messages."""

    def __init__(
        self,
        checkpoints: dict[int, tuple[TrainState, float]] | None = None,
        stop_after: int | None = None,
        stop_on_divergence: bool = False,
    ) -> None:
        # a deep copy: train() resumes SGD's momentum buffers in place (load_state_dict keeps
        # a tensor already on the right device), which would change the caller's checkpoints
        self.checkpoints = copy.deepcopy(dict(checkpoints or {}))
        self.all_checkpoints: list[tuple[int, TrainState]] = []
        self.stop_after = stop_after
        self.stop_on_divergence = stop_on_divergence
        self.results: dict[int, TrainResult] = {}
        self.saved: dict[int, Outcome] = {}
        self.diverged_at: dict[int, tuple[int, int]] = {}
        self.messages: list[str] = []
        self.tracked: list[list[int]] = []
        self.progress: list[tuple[int, int, float | None]] = []
        self.closed = 0

    def resume(self, job: Job) -> tuple[TrainState, float] | None:
        return self.checkpoints.get(job.index)

    def checkpoint(self, job: Job, state: TrainState, seconds: float) -> None:
        buffer = io.BytesIO()
        torch.save(state.to_dict(), buffer)
        buffer.seek(0)
        kept = TrainState.from_dict(torch.load(buffer, weights_only=True))
        self.checkpoints[job.index] = (kept, seconds)
        self.all_checkpoints.append((job.index, kept))
        if self.stop_after is not None and len(self.all_checkpoints) >= self.stop_after:
            raise StopTraining

    def track(self, jobs: Sequence[Job]) -> Recorder:
        self.tracked.append([j.index for j in jobs])
        return self

    def __call__(self, step: int, total: int, loss: float | None) -> None:
        self.progress.append((step, total, loss))

    def close(self) -> None:
        self.closed += 1

    def finish(self, job: Job, result: TrainResult, seconds: float) -> Outcome:
        self.results[job.index] = result
        return Outcome(result.final_state, {"dropped": False, "steps": result.steps})

    def diverged(self, job: Job, error: DivergenceError) -> Outcome:
        self.diverged_at[job.index] = (error.step, error.epoch)
        if self.stop_on_divergence:
            raise RuntimeError(f"ingredient {job.index} diverged")
        return Outcome(None, {"dropped": True, "step": error.step, "epoch": error.epoch})

    def save(self, job: Job, outcome: Outcome) -> None:
        self.saved[job.index] = outcome

    def message(self, text: str) -> None:
        self.messages.append(text)


# -- tiny problems -------------------------------------------------------------------------------


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU()
        )
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.layers(x))


def problem(
    net: str = "conv", dtype: torch.dtype = torch.float64, n: int = 80
) -> tuple[nn.Module, Split, Mask]:
    """A model (seeded), a (1, 8, 8) 3-class split with crop-and-flip augmentation, and a mask
    pruning about half of every weight matrix."""
    torch.manual_seed(0)
    model = (TinyConvNet() if net == "conv" else TinyMLP()).to(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 8, 8, generator=g, dtype=dtype)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()
    split = Split(x, y, Augmentation(crop_padding=1, horizontal_flip=True))
    mask = Mask(
        {
            name: torch.rand(p.shape, generator=g) > 0.5
            for name, p in model.named_parameters()
            if p.dim() > 1
        }
    )
    return model, split, mask


BASE = TrainSettings(
    epochs=4,
    batch_size=16,
    lr=0.05,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    schedule="cosine",
    warmup=0.1,
    swa_start=0.5,
    swa_lr=0.02,
    augment=True,
)


def jobs_of(*settings: TrainSettings, seeds: Sequence[int] = (11, 22, 33, 44)) -> list[Job]:
    return [Job(i, seeds[i], s) for i, s in enumerate(settings)]


THREE = jobs_of(
    BASE,
    dataclasses.replace(BASE, lr=0.08, weight_decay=1e-3),
    dataclasses.replace(BASE, lr=0.03, weight_decay=0.0, schedule="llr", swa_lr=0.01),
)


def work_of(model: nn.Module, mask: Mask, start_step: int = 0, masked: bool = True) -> Work:
    """The model's weights as the jobs' start, pruned by ``mask`` or (``masked=False``) not:
    ``train`` prunes them before the first step, but SWA's first copy keeps them."""
    start = clone_state(model, device="cpu")
    if masked:
        start = mask.applied(start)
    return Work(cycle=1, lineage=0, start=start, start_step=start_step, mask=mask)


def run(executor, model, split, work, jobs, hooks=None) -> Recorder:
    hooks = hooks or Recorder()
    executor.run(model, LoopTrainer(split), work, jobs, hooks)
    return hooks


def assert_states_close(a: dict, b: dict, tol: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], **tol, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def assert_results_close(a: Recorder, b: Recorder, tol: dict) -> None:
    assert sorted(a.results) == sorted(b.results)
    for i in a.results:
        ra, rb = a.results[i], b.results[i]
        assert (ra.steps, ra.swa_count) == (rb.steps, rb.swa_count)
        torch.testing.assert_close(ra.losses, rb.losses, **LOSS)
        assert [e.loss for e in ra.history] == ra.losses  # one record per epoch's loss
        assert_histories_close(ra.history, rb.history)
        assert_states_close(ra.state, rb.state, tol)
        assert (ra.swa_state is None) == (rb.swa_state is None)
        if ra.swa_state is not None:
            assert_states_close(ra.swa_state, rb.swa_state, tol)
        assert ra.mask == rb.mask


def assert_histories_close(a: list[EpochLog], b: list[EpochLog]) -> None:
    """The same epochs, steps, learning rates and training accuracies (the predictions of
    these small runs are nowhere near a tie), losses as ``LOSS``; wall clocks left out."""
    assert [(e.epoch, e.step, e.lr, e.accuracy) for e in a] == [
        (e.epoch, e.step, e.lr, e.accuracy) for e in b
    ]
    torch.testing.assert_close([e.loss for e in a], [e.loss for e in b], **LOSS)


def assert_checkpoints_close(a: TrainState, b: TrainState, tol: dict) -> None:
    assert a.step == b.step
    assert_states_close(a.model, b.model, tol)
    torch.testing.assert_close(a.losses, b.losses, **LOSS)
    assert_histories_close(a.history, b.history)
    assert a.optimizer["param_groups"] == b.optimizer["param_groups"]
    assert a.optimizer["state"].keys() == b.optimizer["state"].keys()
    for i, entry in a.optimizer["state"].items():
        assert entry.keys() == b.optimizer["state"][i].keys()
        torch.testing.assert_close(
            entry["momentum_buffer"], b.optimizer["state"][i]["momentum_buffer"], **tol
        )
    assert (a.swa is None) == (b.swa is None)
    if a.swa is not None:
        assert_states_close(a.swa, b.swa, tol)
    assert (a.rewind, a.mask) == (b.rewind, b.mask)


# -- equality with Sequential --------------------------------------------------------------------


@pytest.mark.parametrize("net", ["conv", "mlp"])
@pytest.mark.parametrize("device", DEVICES)
def test_float64_stacked_equals_sequential(net, device):
    """On the CPU and on CUDA (the model on the device, the split on the CPU). On CUDA the
    default ``auto`` settings add channels-last (bf16 autocast leaves float64 alone) and
    cuDNN's grouped convolution sums in another order than K plain ones: ``F64_CUDA``."""
    model, split, mask = problem(net)
    model.to(device)
    work = work_of(model, mask, masked=False)
    seq = run(Sequential(), model, split, work, THREE)
    stk = run(Stacked(), model, split, work, THREE)
    assert stk.messages == []  # no fallback
    assert stk.tracked == [[0, 1, 2]] and stk.closed == 1
    tol = F64 if device == "cpu" else F64_CUDA
    assert_results_close(stk, seq, tol)
    assert {t.device.type for t in stk.results[0].state.values()} == {device}
    # the ingredients really differ (seed, lr, weight decay); SWA averaged epochs 2 and 3
    a, b = stk.results[0].state, stk.results[1].state
    assert not torch.allclose(
        a["fc.weight" if net == "conv" else "out.weight"],
        b["fc.weight" if net == "conv" else "out.weight"],
    )
    assert stk.results[0].swa_count == 2
    for result in stk.results.values():
        for name, alive in mask.to(device).items():
            assert torch.all(result.state[name][~alive] == 0), name
            assert torch.all(result.swa_state[name][~alive] == 0), name
    # every epoch checkpoint is train()'s, in format and (to tolerance) in value
    assert [i for i, _ in stk.all_checkpoints] == [0, 1, 2] * 4
    seq_checkpoints = sorted(seq.all_checkpoints, key=lambda c: (c[1].step, c[0]))
    stk_checkpoints = sorted(stk.all_checkpoints, key=lambda c: (c[1].step, c[0]))
    for (i, s), (j, t) in zip(stk_checkpoints, seq_checkpoints, strict=True):
        assert i == j
        assert list(s.swa) == list(t.swa)
        assert_checkpoints_close(s, t, tol)
    # progress: every step, the loss at each epoch end
    steps = [p[0] for p in stk.progress if p[2] is None]
    assert steps == list(range(1, 4 * 5 + 1))
    assert sum(p[2] is not None for p in stk.progress) == 4


def test_float64_bn_buffers_are_per_ingredient():
    model, split, mask = problem("conv")
    work = work_of(model, mask)
    seq = run(Sequential(), model, split, work, THREE)
    stk = run(Stacked(), model, split, work, THREE)
    for i in range(3):
        for key in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
            torch.testing.assert_close(stk.results[i].state[key], seq.results[i].state[key], **F64)
            # train()'s AveragedModel(use_buffers=False) copies the model's buffers at each update
            torch.testing.assert_close(
                stk.results[i].swa_state[key], seq.results[i].state[key], **F64
            )
        assert int(stk.results[i].state["bn.num_batches_tracked"]) == 20
    assert not torch.allclose(
        stk.results[0].state["bn.running_mean"], stk.results[1].state["bn.running_mean"]
    )


@pytest.mark.parametrize(("drop_last", "spe"), [(False, 6), (True, 5)])
def test_float64_stacked_equals_sequential_with_a_partial_last_batch(drop_last, spe):
    """90 samples in batches of 16: 5 full batches and one of 10, which both executors train
    on (6 steps an epoch) unless ``drop_last`` (5)."""
    model, split, mask = problem("conv", n=90)
    work = work_of(model, mask)
    jobs = [
        dataclasses.replace(j, settings=dataclasses.replace(j.settings, drop_last=drop_last))
        for j in THREE
    ]
    seq = run(Sequential(), model, split, work, jobs)
    stk = run(Stacked(), model, split, work, jobs)
    assert stk.messages == []
    assert_results_close(stk, seq, F64)
    assert {r.steps for r in stk.results.values()} == {4 * spe}
    assert [e.step for e in stk.results[0].history] == [spe, 2 * spe, 3 * spe, 4 * spe]


def test_float32_stacked_equals_sequential():
    model, split, mask = problem("conv", torch.float32)
    work = work_of(model, mask)
    seq = run(Sequential(), model, split, work, THREE)
    stk = run(Stacked(), model, split, work, THREE)
    assert stk.messages == []
    assert_results_close(stk, seq, F32)


def test_mid_epoch_start_momentum_free_and_no_swa():
    """A rewind start inside an epoch (start_step 2 of 5), plain SGD, no SWA, no mask."""
    model, split, _ = problem("mlp")
    plain = dataclasses.replace(BASE, momentum=0.0, nesterov=False, swa_start=None)
    jobs = jobs_of(plain, dataclasses.replace(plain, lr=0.1))
    work = work_of(model, Mask({}), start_step=2)
    seq = run(Sequential(), model, split, work, jobs)
    stk = run(Stacked(), model, split, work, jobs)
    assert stk.messages == []
    assert_results_close(stk, seq, F64)
    assert stk.results[0].steps == 20 and stk.results[0].swa_state is None
    assert stk.all_checkpoints[0][1].optimizer["state"] == {}


def test_channels_last():
    model, split, mask = problem("conv")
    jobs = [
        dataclasses.replace(j, settings=dataclasses.replace(j.settings, channels_last=True))
        for j in THREE[:2]
    ]
    work = work_of(model, mask)
    seq = run(Sequential(), model, split, work, jobs)
    stk = run(Stacked(), model, split, work, jobs)
    assert stk.messages == []
    assert_results_close(stk, seq, F64)


def test_bf16_autocast_is_applied_and_close_to_sequential():
    """bf16 rounds differently in a grouped convolution, so only bf16's own precision holds
    (losses within 1 %); that autocast is on shows in losses unlike the fp32 run's."""
    model, split, mask = problem("conv", torch.float32)
    work = work_of(model, mask)
    bf16 = [
        dataclasses.replace(j, settings=dataclasses.replace(j.settings, precision="bf16"))
        for j in THREE
    ]
    seq = run(Sequential(), model, split, work, bf16)
    stk = run(Stacked(), model, split, work, bf16)
    fp32 = run(Stacked(), model, split, work, THREE)
    assert stk.messages == []
    for i in range(3):
        torch.testing.assert_close(stk.results[i].losses, seq.results[i].losses, rtol=1e-2, atol=0)
        assert (
            max(
                abs(a - b)
                for a, b in zip(stk.results[i].losses, fp32.results[i].losses, strict=True)
            )
            > 1e-5
        )
        for name, alive in mask.items():
            assert torch.all(stk.results[i].state[name][~alive] == 0), name


# -- checkpoints: either executor resumes the other's ---------------------------------------------


@pytest.mark.parametrize(
    ("first", "then"), [(Stacked, Sequential), (Sequential, Stacked), (Stacked, Stacked)]
)
def test_resume_across_executors_equals_uninterrupted(first, then):
    model, split, mask = problem("conv")
    work = work_of(model, mask)
    whole = run(Sequential(), model, split, work, THREE)
    # stop after every ingredient wrote its first epoch checkpoint (the stack writes all three
    # at one epoch end; Sequential would go on with ingredient 0, so it is stopped per job)
    stopped = Recorder(stop_after=3)
    if first is Sequential:
        for job in THREE:
            hooks = Recorder(stop_after=1)
            with pytest.raises(StopTraining):
                Sequential().run(model, LoopTrainer(split), work, [job], hooks)
            stopped.checkpoints.update(hooks.checkpoints)
    else:
        with pytest.raises(StopTraining):
            first().run(model, LoopTrainer(split), work, THREE, stopped)
        assert stopped.closed == 1
    assert sorted(stopped.checkpoints) == [0, 1, 2]
    assert {s.step for s, _ in stopped.checkpoints.values()} == {5}
    resumed = run(then(), model, split, work, THREE, Recorder(dict(stopped.checkpoints)))
    assert not [m for m in resumed.messages if m.startswith("stacked:")]
    assert sum("resuming at step 5" in m for m in resumed.messages) == 3
    assert_results_close(resumed, whole, F64)


def test_resume_at_the_last_step_only_finishes():
    model, split, mask = problem("conv")
    work = work_of(model, mask)
    whole = run(Stacked(), model, split, work, THREE)
    last = {i: whole.checkpoints[i] for i in range(3)}
    again = run(Stacked(), model, split, work, THREE, Recorder(last))
    assert again.all_checkpoints == []
    assert_results_close(again, whole, {"atol": 0.0, "rtol": 0.0})


# -- fallbacks -----------------------------------------------------------------------------------


def _fallbacks():
    model, split, mask = problem("mlp")
    work = work_of(model, mask)
    other = dataclasses.replace
    cases = {
        "ingredients differ in epochs": (work, jobs_of(BASE, other(BASE, epochs=2))),
        "ingredients differ in batch_size": (work, jobs_of(BASE, other(BASE, batch_size=8))),
        "ingredients differ in momentum": (work, jobs_of(BASE, other(BASE, momentum=0.5))),
        "ingredients differ in swa_start": (work, jobs_of(BASE, other(BASE, swa_start=0.6))),
        "optimizer 'adam' is not stacked": (
            work,
            jobs_of(other(BASE, optimizer="adam"), other(BASE, optimizer="adam")),
        ),
        "a mask schedule changes the mask": (
            dataclasses.replace(work, during=_NeverPrune()),
            jobs_of(BASE, other(BASE, lr=0.1)),
        ),
    }
    return model, split, cases


class _NeverPrune:
    needs_gradients = False

    def update(self, epoch, weights, gradients, mask):
        return None


@pytest.mark.parametrize("reason", list(_fallbacks()[2]))
def test_fallbacks_say_why_and_train_sequentially(reason):
    model, split, cases = _fallbacks()
    work, jobs = cases[reason]
    seq = run(Sequential(), model, split, work, jobs)
    stk = run(Stacked(), model, split, work, jobs)
    assert len(stk.messages) == 1 and stk.messages[0].startswith(f"stacked: {reason}")
    assert stk.tracked == [[j.index] for j in jobs]  # Sequential's one tracker per job
    assert_results_close(stk, seq, {"atol": 0.0, "rtol": 0.0})


def test_one_ingredient_trains_sequentially_without_a_word():
    model, split, mask = problem("mlp")
    work, jobs = work_of(model, mask), jobs_of(BASE)
    seq = run(Sequential(), model, split, work, jobs)
    stk = run(Stacked(), model, split, work, jobs)
    assert stk.messages == [] and stk.tracked == [[0]]
    assert_results_close(stk, seq, {"atol": 0.0, "rtol": 0.0})


def test_partial_checkpoints_fall_back():
    model, split, mask = problem("mlp")
    work = work_of(model, mask)
    jobs = THREE
    first = Recorder(stop_after=1)
    with pytest.raises(StopTraining):
        Sequential().run(model, LoopTrainer(split), work, jobs, first)
    seq = run(Sequential(), model, split, work, jobs, Recorder(dict(first.checkpoints)))
    stk = run(Stacked(), model, split, work, jobs, Recorder(dict(first.checkpoints)))
    assert stk.messages[0] == (
        "stacked: some ingredients have a checkpoint and some not; training them one by one"
    )
    assert_results_close(stk, seq, {"atol": 0.0, "rtol": 0.0})


# -- divergence ----------------------------------------------------------------------------------


def diverging_jobs() -> list[Job]:
    """Three jobs, SWA from epoch 1; the second's swa_lr (1000) makes it diverge in epoch 1."""
    settings = dataclasses.replace(BASE, swa_start=0.34)
    return jobs_of(settings, dataclasses.replace(settings, swa_lr=1e3), settings)


def test_a_diverging_ingredient_is_dropped_like_sequential_drops_it():
    model, split, mask = problem("conv")
    work = work_of(model, mask)
    jobs = diverging_jobs()
    seq = run(Sequential(), model, split, work, jobs)
    stk = run(Stacked(), model, split, work, jobs)
    assert seq.diverged_at == stk.diverged_at == {1: (9, 1)}
    assert stk.saved[1].state is None and stk.saved[1].info["dropped"]
    assert sorted(stk.saved) == [0, 1, 2]
    assert_results_close(stk, seq, F64)  # the others are untouched by it
    # it wrote its epoch-0 checkpoint only; the others all three
    assert [(i, s.step) for i, s in stk.all_checkpoints] == [
        *[(0, 5), (1, 5), (2, 5)],
        *[(0, 10), (2, 10)],
        *[(0, 15), (2, 15)],
        *[(0, 20), (2, 20)],
    ]


def test_divergence_policy_that_raises_stops_the_stack():
    model, split, mask = problem("conv")
    work = work_of(model, mask)
    jobs = diverging_jobs()
    hooks = Recorder(stop_on_divergence=True)
    with pytest.raises(RuntimeError, match="ingredient 1 diverged"):
        Stacked().run(model, LoopTrainer(split), work, jobs, hooks)
    assert hooks.closed == 1 and hooks.saved == {}


# -- through the engine --------------------------------------------------------------------------


class _Spy(Stacked):
    """Stacked, noting the jobs it is given and the messages it sends."""

    def __init__(self) -> None:
        self.jobs: list[list[int]] = []
        self.messages: list[str] = []

    def run(self, model, trainer, work, jobs, hooks):
        self.jobs.append([j.index for j in jobs])
        spy = self

        class Noted:
            def __getattr__(self, name):
                return getattr(hooks, name)

            def message(self, text: str) -> None:
                spy.messages.append(text)
                hooks.message(text)

        return super().run(model, trainer, work, jobs, Noted())


def _float64(split: Split | None) -> Split | None:
    return None if split is None else Split(split.x.double(), split.y, split.augmentation)


def test_engine_swamp_run_stacked_equals_sequential(tmp_path, monkeypatch):
    """A tiny SWAMP run (3 particles, 2 cycles) through the engine, once per executor: same
    masks, rows and weights (every ingredient's and the combined ones; atol 1e-10).

    In float64: the tiny MNIST-1D problem is chaotic in float32 (a 1e-7 relative change of the
    start moves the trained weights by O(1) under either executor), so only float64 can tell a
    stacking error from rounding."""
    import sparseavg.experiment.engine as engine
    import sparseavg.experiment.task as task_module
    from engine_helpers import rows, tiny_run
    from sparseavg.utils.files import load_tensors

    build, prepare = task_module.make_model, engine.prepare
    monkeypatch.setattr(task_module, "make_model", lambda *a, **k: build(*a, **k).double())

    def prepare_with(executor):
        def patched(*args, **kwargs):
            ctx = prepare(*args, **kwargs)
            data = ctx.task.data
            splits = {k: _float64(getattr(data, k)) for k in ("train", "val", "test")}
            data = dataclasses.replace(data, **splits)
            task = DataTask(ctx.config, data, ctx.task.device)
            return dataclasses.replace(ctx, task=task, executor=executor)

        return patched

    values = {"recipe": "swamp", "ingredients": {"count": 3}}
    monkeypatch.setattr(engine, "prepare", prepare_with(Sequential()))
    sequential = tiny_run(tmp_path / "sequential", values)
    spy = _Spy()
    monkeypatch.setattr(engine, "prepare", prepare_with(spy))
    stacked = tiny_run(tmp_path / "stacked", values)
    assert spy.jobs == [[0, 1, 2], [0, 1, 2]]  # both cycles, all three particles stacked
    assert not [m for m in spy.messages if m.startswith("stacked:")]
    files = sorted(p.relative_to(sequential) for p in sequential.rglob("*.safetensors"))
    assert sorted(p.relative_to(stacked) for p in stacked.rglob("*.safetensors")) == files
    assert len([f for f in files if f.name == "final.safetensors"]) == 6
    for f in files:
        a, b = load_tensors(stacked / f), load_tensors(sequential / f)
        assert_states_close(a, b, {"atol": 1e-10, "rtol": 0.0})
    ra, rb = rows(stacked), rows(sequential)
    assert len(ra) == len(rb) > 0
    for x, y in zip(ra, rb, strict=True):
        assert x.keys() == y.keys()
        for key, value in x.items():
            if isinstance(value, float):
                assert value == pytest.approx(y[key], abs=1e-9), key
            else:
                assert value == y[key], key


def test_execution_compile_reaches_every_ingredient_and_stacked_leaves_it_to_sequential(
    monkeypatch,
):
    """``Work.compile`` compiles each ingredient's forward (spied, not compiled: a cold
    compile takes ~30 s); the stack has no compiled form, so it says so and falls back."""
    import sparseavg.training.loop as loop

    compiled: list[int] = []

    def spy(model):
        compiled.append(id(model))
        return model

    monkeypatch.setattr(loop, "_compiled", spy)
    model, split, mask = problem("mlp")
    work = dataclasses.replace(work_of(model, mask), compile=True)
    jobs = jobs_of(BASE, dataclasses.replace(BASE, lr=0.1))
    seq = run(Sequential(), model, split, work, jobs)
    assert compiled == [id(model)] * 2
    stk = run(Stacked(), model, split, work, jobs)
    assert stk.messages == [
        "stacked: execution.compile compiles one model's forward, not the "
        "stacked one; training them one by one"
    ]
    assert compiled == [id(model)] * 4
    assert_results_close(stk, seq, {"atol": 0.0, "rtol": 0.0})


def test_auto_never_stacks_on_a_cpu_and_the_modes_pick_their_executors():
    from engine_helpers import tiny_config
    from sparseavg.experiment import choose_executor
    from sparseavg.parallel import Auto, stacked_fits

    model, _, _ = problem("mlp")
    assert not stacked_fits(model, 2)
    cpu = torch.device("cpu")
    pick = {
        m: choose_executor(tiny_config({"execution": {"mode": m}}), cpu)
        for m in ("auto", "sequential", "stacked")
    }
    assert type(pick["auto"]) is Sequential and type(pick["sequential"]) is Sequential
    assert type(pick["stacked"]) is Stacked
    assert type(choose_executor(tiny_config({}), torch.device("cuda"))) is Auto
