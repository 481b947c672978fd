"""Recipes on the user's own model and training loop (``sparseavg.swamp/sms/imp/prune``)."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from torch import nn

import sparseavg
from engine_helpers import rows, tiny_config
from sparseavg.config import ConfigError
from sparseavg.experiment import PlainReporter, run
from sparseavg.experiment.task import load_data
from sparseavg.models import build_model
from sparseavg.pruning import Mask, MaskError
from sparseavg.training import evaluate, steps_per_epoch, train
from sparseavg.utils.files import load_tensors

# -- the built-in loop, called as a user's train_fn ----------------------------------------------


def _mnist1d(config):
    data = load_data(config, torch.device("cpu"))
    width = config.model.options["width"]

    def model_fn() -> nn.Module:
        return build_model("conv1d", data.num_classes, data.input_shape, width=width)

    def eval_fn(model: nn.Module) -> dict:
        e = evaluate(model, data.test)
        return {"accuracy": e.accuracy, "loss": e.loss}

    return data, model_fn, eval_fn


def _builtin_as_train_fn(data, batch_size: int):
    """``sparseavg.train`` one epoch at a time (resuming its own checkpoint), with
    ``settings.end_epoch`` after each: what the built-in loop computes, through the user path."""
    spe = steps_per_epoch(data.train, batch_size)

    def train_fn(model, mask, seed, settings):
        state = None
        for epoch in settings.epoch_range:
            kept = []
            train(
                model,
                data.train,
                settings.train,
                seed=seed,
                mask=mask,
                start_step=settings.start_epoch * spe,
                stop_step=(epoch + 1) * spe,
                resume=state,
                on_epoch_end=kept.append,
            )
            state = kept[-1]
            settings.end_epoch(model, state.losses[-1])

    return train_fn


def _plain_loop(data, batch_size: int):
    """A plain training loop over the built-in loop's batches and learning rates (SGD as
    ``settings.train`` says, zero_grad, backward, step) that keeps the mask with
    ``settings.attach(model, optimizer, steps_per_epoch)``: it computes what the built-in loop
    does for recipes whose mask moves during training (rigl's steps, dpf's feedback)."""
    import torch.nn.functional as F

    from sparseavg.training import build_optimizer
    from sparseavg.utils.seeding import make_generator

    spe = steps_per_epoch(data.train, batch_size)

    def train_fn(model, mask, seed, settings):
        opt = build_optimizer(model, settings.train)
        settings.attach(model, opt, steps_per_epoch=spe)
        step = settings.start_epoch * spe
        for epoch in settings.epoch_range:
            order = make_generator(seed, "epoch", epoch)
            for x, y in data.train.batches(batch_size, generator=order):
                for group in opt.param_groups:
                    group["lr"] = settings.learning_rate(step, spe)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            settings.end_epoch(model, loss.item())

    return train_fn


def own_equals_builtin(tmp_path, values: dict) -> tuple:
    """Run ``values`` built in and through :func:`_plain_loop` with ``sparseavg.prune``;
    assert the same rows, masks and models bit for bit; return both run directories."""
    config = tiny_config(values)
    builtin = run(config, tmp_path / "builtin")
    data, model_fn, eval_fn = _mnist1d(config)
    batch = config.train.batch_size
    kept = {k: v for k, v in config.to_dict().items() if k in ("train", "pruning", "bn", "seed")}
    if "ingredients" in values:
        kept["ingredients"] = values["ingredients"]
    own = sparseavg.prune(
        config.recipe, model_fn, _plain_loop(data, batch), eval_fn, runs_dir=tmp_path / "own",
        config=kept, bn_batches=lambda: (b for b in data.train.batches(batch)), progress=False,
    )  # fmt: skip
    assert [_comparable(r) for r in rows(builtin)] == [_comparable(r) for r in own.rows]
    files = sorted(builtin.rglob("combined.safetensors")) + sorted(builtin.rglob("mask*"))
    files += sorted(builtin.rglob("dense.safetensors"))
    assert files
    for f in files:
        a, b = load_tensors(f), load_tensors(own.path / f.relative_to(builtin))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    return builtin, own.path


def _comparable(row: dict) -> dict:
    """A row's numbers but an ensemble's loss (the user's eval_fn takes the cross-entropy of
    log-averaged probabilities, the built-in NLL of the averaged ones: equal up to rounding)."""
    keep = ("cycle", "lineage", "role", "ingredient", "sparsity", "alive", "total", "headline")
    loss = None if row["role"] == "ensemble" else row["loss"]
    return {**{k: row[k] for k in keep}, "accuracy": row["accuracy"], "loss": loss}


@pytest.mark.parametrize(
    "values",
    [
        {"recipe": "imp"},
        {"recipe": "swamp", "ingredients": {"count": 2}},
        # the SMS code recalibrates on augmented batches drawn per call; here the user's
        # batches are the plain ones, so the built-in run recalibrates on those too
        {"recipe": "sms", "ingredients": {"count": 2}, "bn": {"augment": False}},
        {"recipe": "bimp"},
        {"recipe": "sms-bimp", "ingredients": {"count": 2}},
    ],
    ids=["imp", "swamp", "sms", "bimp", "sms-bimp"],
)
def test_a_users_loop_that_trains_as_the_builtin_one_gives_the_builtin_run(tmp_path, values):
    """Same seeds, same model, same steps: the engine with the user's model_fn, train_fn and
    eval_fn computes bit for bit what it computes with its own data and loop (masks, rows,
    every combined model), SWA taken through settings.end_epoch."""
    config = tiny_config({**values, "pruning": {"rewind_epochs": 1.0, "cycles": 1}})
    builtin = run(config, tmp_path / "builtin")
    data, model_fn, eval_fn = _mnist1d(config)
    kept = {k: v for k, v in config.to_dict().items() if k in ("train", "pruning", "bn", "seed")}
    kept["ingredients"] = values.get("ingredients", {})
    own = sparseavg.prune(
        config.recipe,
        model_fn,
        _builtin_as_train_fn(data, config.train.batch_size),
        eval_fn,
        runs_dir=tmp_path / "own",
        config=kept,
        bn_batches=lambda: (b for b in data.train.batches(config.train.batch_size)),
        progress=False,
    )
    assert [_comparable(r) for r in rows(builtin)] == [_comparable(r) for r in own.rows]
    losses = [(a["loss"], b["loss"]) for a, b in zip(rows(builtin), own.rows, strict=True)]
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in losses)
    assert all(r["metrics"]["accuracy"] == r["accuracy"] for r in own.rows)
    for f in sorted(builtin.rglob("combined.safetensors")) + sorted(builtin.rglob("mask*")):
        a, b = load_tensors(f), load_tensors(own.path / f.relative_to(builtin))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f


# -- a hand-written loop on models the zoo does not have -----------------------------------------


class TiedLM(nn.Module):
    """Embedding -> LayerNorm -> attention -> head tied to the embedding: no BatchNorm, a
    shared weight, and prunable parameters that are not conv/linear weights."""

    def __init__(self, vocab: int = 12, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.embed(x))
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.head(h.mean(dim=1))


def _tokens(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 12, (n, 5), generator=g)
    return x, x[:, 0]  # predict the first token


X, Y = _tokens()
XT, YT = _tokens(32, seed=1)


def loop(model, mask, seed, settings, *, keep_mask: bool = True, end_epochs: bool = True):
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    handle = sparseavg.attach(model, mask, opt) if keep_mask else None
    g = torch.Generator().manual_seed(seed)
    steps = 4
    for epoch in settings.epoch_range:
        order = torch.randperm(len(X), generator=g)
        for i in range(steps):
            for group in opt.param_groups:
                group["lr"] = settings.learning_rate(epoch * steps + i, steps)
            idx = order[i * 16 : (i + 1) * 16]
            loss = nn.functional.cross_entropy(model(X[idx]), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if end_epochs:
            settings.end_epoch(model, loss.item())
    if handle is not None:
        handle.remove()


def accuracy(model) -> dict:
    logits = model(XT)
    return {
        "accuracy": float((logits.argmax(1) == YT).float().mean()),
        "loss": float(nn.functional.cross_entropy(logits, YT)),
        "top3": float((logits.topk(3).indices == YT[:, None]).any(1).float().mean()),
    }


OWN = {"train": {"epochs": 4, "lr": 0.01}, "pruning": {"cycles": 2, "rewind_epochs": 0.0}}
PRUNABLE = ["embed.weight", "attn.in_proj_weight", "attn.out_proj.weight"]


def test_swamp_on_a_tied_layernorm_attention_model(tmp_path):
    stream = io.StringIO()
    result = sparseavg.swamp(
        TiedLM,
        loop,
        accuracy,
        particles=3,
        runs_dir=tmp_path,
        name="tokens",
        config=OWN,
        prunable=PRUNABLE,
        progress=PlainReporter(stream),
    )
    log = stream.getvalue()
    # the prunable set is printed before the first cycle, under its first (tied) name
    assert "prunable: 3 tensors, 352 weights: embed.weight (12, 8), attn.in_proj_weight" in log
    assert log.index("prunable:") < log.index("cycle 0")
    assert result.path.name.startswith("swamp-tokens-TiedLM-")
    headline = result.headline
    assert [r["cycle"] for r in headline] == [0, 1, 2]
    assert [r["alive"] for r in headline] == [352, 282, 226]  # 352 - round(0.2 * 352), ...
    assert all(0 <= r["accuracy"] <= 1 and "top3" in r["metrics"] for r in headline)
    state, mask = result.load()
    assert list(mask) == PRUNABLE
    assert mask.num_alive == 226
    # the tied head is the embedding, pruned with it, in the saved state too
    assert torch.equal(state["head.weight"], state["embed.weight"])
    assert int((state["embed.weight"][~mask["embed.weight"]] != 0).sum()) == 0
    # the combined model is the uniform average of the particles, which used SWA
    import json

    from sparseavg.averaging import uniform_average

    last = result.path / "cycle_02"
    parts = [load_tensors(last / f"ingredient_{k}" / "final.safetensors") for k in range(3)]
    combined = load_tensors(last / "combined.safetensors")
    average = uniform_average(parts, mask=mask)
    assert all(torch.equal(average[k], combined[k]) for k in combined)
    info = json.loads((last / "ingredient_0" / "info.json").read_text())
    assert info["swa_count"] == 1  # the last 25 % of 4 epochs
    model = TiedLM()
    model.load_state_dict(state)  # a plain state_dict: the unmodified model loads it


def test_a_resumed_own_run_equals_an_uninterrupted_one(tmp_path):
    calls = []
    raised = []

    def interrupted(model, mask, seed, settings):
        calls.append((settings.cycle, settings.index))
        if (settings.cycle, settings.index) == (2, 1) and not raised:
            raised.append(True)
            raise KeyboardInterrupt
        loop(model, mask, seed, settings)

    args = (TiedLM, loop, accuracy)
    kw = {"particles": 2, "config": OWN, "prunable": PRUNABLE, "progress": False}
    whole = sparseavg.swamp(*args, runs_dir=tmp_path / "a", **kw)
    with pytest.raises(KeyboardInterrupt):
        sparseavg.swamp(TiedLM, interrupted, accuracy, runs_dir=tmp_path / "b", **kw)
    assert calls[-1] == (2, 1)  # cycles 0 and 1 and particle 0 of cycle 2 were done
    calls.clear()
    resumed = sparseavg.swamp(TiedLM, interrupted, accuracy, runs_dir=tmp_path / "b", **kw)
    assert calls == [(2, 1)]  # only the interrupted particle trains again
    strip = [{k: v for k, v in r.items() if k not in ("seconds",)} for r in whole.rows]
    assert strip == [{k: v for k, v in r.items() if k not in ("seconds",)} for r in resumed.rows]


def test_a_loop_that_drops_the_mask_is_stopped_after_its_first_epoch(tmp_path):
    def careless(model, mask, seed, settings):
        loop(model, mask, seed, settings, keep_mask=False)

    with pytest.raises(MaskError, match=r"after epoch 0, \d+ pruned weights are nonzero.*attach"):
        sparseavg.imp(
            TiedLM,
            careless,
            accuracy,
            runs_dir=tmp_path,
            config=OWN,
            prunable=PRUNABLE,
            progress=False,
        )


def test_swa_needs_end_epoch_every_epoch(tmp_path):
    def silent(model, mask, seed, settings):
        loop(model, mask, seed, settings, end_epochs=False)

    with pytest.raises(RuntimeError, match=r"called settings.end_epoch\(model\) 0 times"):
        sparseavg.swamp(
            TiedLM,
            silent,
            accuracy,
            runs_dir=tmp_path,
            config=OWN,
            prunable=PRUNABLE,
            progress=False,
        )


def test_refused_before_anything_is_written(tmp_path):
    def refused(match: str, recipe: str = "swamp", model_fn=TiedLM, **kw) -> None:
        base = {"runs_dir": tmp_path, "config": OWN, "prunable": PRUNABLE, "progress": False}
        with pytest.raises(ConfigError, match=match):
            sparseavg.prune(recipe, model_fn, loop, accuracy, **{**base, **kw})
        assert not list(tmp_path.iterdir())

    refused("whole epochs", config={**OWN, "pruning": {"rewind_epochs": 0.5}})
    refused("include pattern 'nope' matches no parameter", prunable=["nope"])
    twice = {**OWN, "pruning": {**OWN.get("pruning", {}), "include": PRUNABLE}}
    refused("give the prunable set once", config=twice)
    refused("'model' is set by", config={**OWN, "model": {"name": "x"}})
    refused("one-shot iterator", bn_batches=iter([X]))
    refused("score_fn", recipe="sms", config={**OWN, "ingredients": {"combine": "greedy"}})

    def with_bn() -> nn.Module:
        return nn.Sequential(
            nn.Embedding(12, 8), nn.Flatten(), nn.BatchNorm1d(40), nn.Linear(40, 12)
        )

    prunable = {"prunable": ["0.weight", "3.weight"]}
    refused("BatchNorm layers.*pass bn_batches", **prunable, model_fn=with_bn)
    refused(
        r"^bn_batches is empty.*mean 0, variance 1", **prunable, model_fn=with_bn, bn_batches=[]
    )
    swamp_rigl = {**OWN, "pruning": {"cycles": 0, "target_sparsity": 0.5, "rewind_epochs": 0.0}}
    refused("in lock step; it cannot run your own train_fn", recipe="swamp-rigl", config=swamp_rigl)


@pytest.mark.parametrize(
    "name", ["x/../../escaped", "../escaped", "/tmp/abs", "..", ".", "a\\b", "tab\tname", ""]
)
def test_a_name_that_would_leave_the_runs_dir_is_refused(tmp_path, name):
    runs = tmp_path / "a" / "b" / "runs"
    with pytest.raises(ConfigError, match=r"^name: "):
        sparseavg.imp(
            TiedLM, loop, accuracy, runs_dir=runs, name=name, config=OWN, prunable=PRUNABLE,
            progress=False,
        )  # fmt: skip
    assert not list(tmp_path.rglob("*"))


def test_a_model_class_name_with_a_separator_is_refused(tmp_path):
    sneaky = type("up/../../out", (TiedLM,), {})
    with pytest.raises(ConfigError, match=r"model_fn's model class name.*'/'"):
        sparseavg.imp(
            sneaky, loop, accuracy, runs_dir=tmp_path / "runs", config=OWN, prunable=PRUNABLE,
            progress=False,
        )  # fmt: skip
    assert not list(tmp_path.rglob("*"))


def test_ensemble_rows_average_probabilities_through_eval_fn(tmp_path):
    result = sparseavg.swamp(
        TiedLM,
        loop,
        accuracy,
        particles=2,
        runs_dir=tmp_path,
        config=OWN,
        prunable=PRUNABLE,
        progress=False,
    )
    ens = [r for r in result.rows if r["role"] == "ensemble"]
    assert [r["cycle"] for r in ens] == [0, 1, 2] and all(r["members"] == 2 for r in ens)
    assert all(math.isfinite(r["loss"]) for r in ens)


def test_ensemble_module_of_identical_models_is_the_model():
    from sparseavg.experiment import EnsembleModule

    torch.manual_seed(0)
    model = TiedLM()
    ens = EnsembleModule([model, model, model])
    assert torch.allclose(ens(XT).softmax(-1), model(XT).softmax(-1), atol=1e-6)


def test_report_inspect_and_export_read_an_own_run_and_analyze_says_what_it_cannot(
    tmp_path, capsys
):
    from sparseavg.cli.main import main

    result = sparseavg.imp(
        TiedLM, loop, accuracy, runs_dir=tmp_path, config=OWN, prunable=PRUNABLE, progress=False
    )
    assert main(["report", str(result.path), "--out", str(tmp_path / "report")]) == 0
    assert "| 35.8 |" in (tmp_path / "report" / "report.md").read_text()
    assert main(["inspect", str(result.path)]) == 0
    out = tmp_path / "model.safetensors"
    assert main(["export", str(result.path), "--cycle", "2", "--out", str(out)]) == 0
    state, _ = result.load(2)
    exported = load_tensors(out)
    assert all(torch.equal(exported[k], state[k]) for k in state)
    capsys.readouterr()
    assert main(["analyze", str(result.path)]) == 2
    assert "'TiedLM' are not built in (a run of your own model)" in capsys.readouterr().err
    assert not (result.path / "analysis").exists()
    before = sorted(tmp_path.rglob("*"))
    onnx = ["export", str(result.path), "--cycle", "2", "--out", str(tmp_path / "o.pt"), "--onnx"]
    assert main(onnx) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "data.dataset" not in err
    assert "a run of your own model ('TiedLM')" in err and "torch.onnx.export" in err
    assert sorted(tmp_path.rglob("*")) == before


def test_ensemble_module_gives_a_hugging_face_output_the_ensembles_loss():
    from types import SimpleNamespace

    from sparseavg.experiment import EnsembleModule

    class Out(nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.value = logits

        def forward(self, labels=None):
            return SimpleNamespace(logits=self.value.clone(), loss=torch.tensor(99.0))

    a = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 2.0], [0.0, 3.0]])
    labels = torch.tensor([0, 1])
    out = EnsembleModule([Out(a), Out(b)])(labels=labels)
    probs = (a.softmax(-1) + b.softmax(-1)) / 2
    assert torch.allclose(out.logits.softmax(-1), probs)
    expected = -torch.log(probs[torch.arange(2), labels]).mean()
    assert torch.allclose(out.loss, expected)
    assert EnsembleModule([Out(a), Out(b)])().loss is None


def test_a_pretrained_batchnorm_model_souped_greedily_on_a_metric_of_choice(tmp_path):
    """sms(pretrained=True, combine="greedy", score_fn=..., metric=..., forward=...): cycle 0
    is the factory's model as it is; greedy soups rank on score_fn; BatchNorm is recomputed
    through forward on the user's dict batches; the rows report the chosen metric."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    torch.manual_seed(123)
    trained = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    weights = {k: v.clone() for k, v in trained.state_dict().items()}

    def model_fn():
        model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
        model.load_state_dict(weights)
        return model

    def train_fn(model, mask, seed, settings):
        opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9)
        sparseavg.attach(model, mask, opt)
        for _ in settings.epoch_range:
            loss = nn.functional.cross_entropy(model(x[:64]), y[:64])
            opt.zero_grad()
            loss.backward()
            opt.step()
            settings.end_epoch(model, loss.item())

    def eval_fn(model):
        logits = model(x[64:])
        top2 = (logits.topk(2).indices == y[64:, None]).any(1).float().mean()
        return {"accuracy": float((logits.argmax(1) == y[64:]).float().mean()), "top2": top2}

    calls = {"forward": 0, "score": 0}

    def forward(model, batch):
        calls["forward"] += 1
        return model(batch["features"])

    def score_fn(model):
        calls["score"] += 1
        return float((model(x[32:64]).argmax(1) == y[32:64]).float().mean())

    result = sparseavg.sms(
        model_fn,
        train_fn,
        eval_fn,
        combine="greedy",
        runs_dir=tmp_path,
        pretrained=True,
        metric="top2",
        forward=forward,
        score_fn=score_fn,
        bn_batches=[{"features": x[:48]}, {"features": x[48:]}],
        config={"train": {"epochs": 3, "lr": 0.05}, "pruning": {"cycles": 1}},
        progress=False,
    )
    rows = result.rows
    assert all(r["accuracy"] == r["metrics"]["top2"] for r in rows if r["accuracy"] is not None)
    model = model_fn()
    model.eval()
    with torch.no_grad():
        expected = float(eval_fn(model)["top2"])
    assert [r["accuracy"] for r in result.headline if r["cycle"] == 0] == [expected]
    assert calls["score"] > 0 and calls["forward"] > 0
    soup = json.loads((result.path / "cycle_01" / "soup.json").read_text())
    assert soup["selected"] and set(soup["selected"]) <= {0, 1, 2}


def test_a_loop_that_changes_the_mask_in_place_is_stopped(tmp_path):
    """A train_fn that sets the mask all-True would make the cycle record 0 % sparsity while
    the saved mask prunes weights the model still holds: refused after the call."""

    def revives(model, mask, seed, settings):
        loop(model, mask, seed, settings)
        for keep in mask.values():
            keep.fill_(True)

    with pytest.raises(MaskError, match=r"^train_fn changed the mask in place \(\d+ entries"):
        sparseavg.imp(
            TiedLM, revives, accuracy, runs_dir=tmp_path, config=OWN, prunable=PRUNABLE,
            progress=False,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"accuracy": math.nan}, r"^cycle 0: eval_fn's accuracy is nan \(role "),
        ({"loss": math.inf}, r"^cycle 0: eval_fn's loss is inf \(role "),
        ({"top3": -math.inf}, r"^cycle 0: eval_fn's top3 is -inf \(role "),
    ],
    ids=["nan-accuracy", "inf-loss", "inf-metric"],
)
def test_a_non_finite_metric_is_refused_before_any_row_is_written(tmp_path, bad, match):
    """Today a NaN accuracy is written as bare NaN into results.jsonl (not JSON) and an inf
    loss becomes null: refused, naming the metric and the cycle, before the cycle's rows."""

    def broken(model) -> dict:
        return {**accuracy(model), **bad}

    from sparseavg.experiment.engine import RunError

    with pytest.raises(RunError, match=match):
        sparseavg.imp(
            TiedLM, loop, broken, runs_dir=tmp_path, config=OWN, prunable=PRUNABLE,
            progress=False,
        )  # fmt: skip
    assert not list(tmp_path.rglob("results.jsonl"))
    assert not list(tmp_path.rglob("rows.json"))


# -- a mask that changes at epoch ends (gmp) -----------------------------------------------------

GMP_OWN = {
    "train": {"epochs": 4, "lr": 0.01},
    "pruning": {"cycles": 0, "target_sparsity": 0.5, "rewind_epochs": 0.0, "gmp_interval": 1},
}


def attached_loop(model, mask, seed, settings, pruned=None):
    """``loop`` with ``settings.attach``: the attached mask follows gmp's steps. Appends the
    pruned count after every epoch end to ``pruned``."""
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9)
    settings.attach(model, opt)
    g = torch.Generator().manual_seed(seed)
    for _ in settings.epoch_range:
        order = torch.randperm(len(X), generator=g)
        for i in range(4):
            idx = order[i * 16 : (i + 1) * 16]
            loss = nn.functional.cross_entropy(model(X[idx]), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        settings.end_epoch(model, loss.item())
        if pruned is not None:
            pruned.append(sum(t.numel() for t in settings.mask.values()) - settings.mask.num_alive)


def test_gmp_on_your_own_loop_prunes_the_schedules_counts_at_epoch_ends(tmp_path):
    """gmp with gmp_interval 1 over 4 epochs prunes after epochs 1, 2, 3 to the cubic
    schedule's 0.352, 0.481 and 0.5 of the 352 prunable weights: 124, 169, 176 (round);
    settings.attach follows each step, so the pruned weights stay exactly 0 and the run ends
    with its mask."""
    from sparseavg.pruning.gmp_reference import bimp_gmp_schedule

    assert [e for e, _ in bimp_gmp_schedule(4, 1, 0.5)] == [1, 2, 3]
    pruned: list[int] = []

    def train_fn(model, mask, seed, settings):
        attached_loop(model, mask, seed, settings, pruned)

    run = sparseavg.prune(
        "gmp", TiedLM, train_fn, accuracy, runs_dir=tmp_path, config=GMP_OWN,
        prunable=PRUNABLE, progress=False,
    )  # fmt: skip
    assert pruned == [124, 169, 176, 176]
    mask = Mask.load(run.path / "cycle_00" / "mask.safetensors")
    total = sum(t.numel() for t in mask.values())
    assert (total, total - mask.num_alive) == (352, 176)
    final = load_tensors(run.path / "cycle_00" / "combined.safetensors")
    assert all(not final[n][~keep.cpu()].any() for n, keep in mask.items())
    assert [(r["role"], r["alive"]) for r in run.rows if r["headline"]] == [("combined", 176)]


def test_gmp_with_a_mask_attached_once_is_refused_naming_settings_attach(tmp_path):
    """``loop`` attaches the first mask with sparseavg.attach, so the weights gmp prunes after
    epoch 1 train on: the next end_epoch stops the run and names the fix."""
    with pytest.raises(MaskError, match=r"after epoch 1, .* settings\.attach\(model, optimizer\)"):
        sparseavg.prune(
            "gmp", TiedLM, loop, accuracy, runs_dir=tmp_path, config=GMP_OWN,
            prunable=PRUNABLE, progress=False,
        )  # fmt: skip


def test_gmp_on_your_own_loop_gives_the_builtin_run(tmp_path):
    """A train_fn that runs the built-in loop one epoch at a time under settings.mask (the
    mask as gmp left it at the last epoch end) computes what the built-in gmp run does."""
    values = {
        "recipe": "gmp",
        "train": {"epochs": 4, "batch_size": 512},
        "pruning": {"cycles": 0, "gmp_interval": 1, "rewind_epochs": 1.0},
    }
    config = tiny_config(values)
    builtin = run(config, tmp_path / "builtin")
    data, model_fn, eval_fn = _mnist1d(config)
    spe = steps_per_epoch(data.train, config.train.batch_size)

    def train_fn(model, mask, seed, settings):
        state = None
        for epoch in settings.epoch_range:
            kept = []
            train(
                model, data.train, settings.train, seed=seed,
                mask=settings.mask if settings.mask is not None else mask,
                start_step=settings.start_epoch * spe, stop_step=(epoch + 1) * spe,
                resume=state, on_epoch_end=kept.append,
            )  # fmt: skip
            state = kept[-1]
            settings.end_epoch(model, state.losses[-1])

    kept = {k: v for k, v in config.to_dict().items() if k in ("train", "pruning", "bn", "seed")}
    own = sparseavg.prune(
        "gmp", model_fn, train_fn, eval_fn, runs_dir=tmp_path / "own", config=kept,
        bn_batches=lambda: (b for b in data.train.batches(config.train.batch_size)),
        progress=False,
    )  # fmt: skip
    assert [_comparable(r) for r in rows(builtin)] == [_comparable(r) for r in own.rows]
    for f in sorted(builtin.rglob("combined.safetensors")) + sorted(builtin.rglob("mask*")):
        a, b = load_tensors(f), load_tensors(own.path / f.relative_to(builtin))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
