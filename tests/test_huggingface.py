"""Hugging Face Transformers through the user API: SWAMP on a tiny BERT built from a config
(nothing downloaded), with a hand-written loop and with ``trainer_train_fn`` (the user's
``Trainer``), and ``MaskCallback`` in a plain ``Trainer`` fit. Skipped where transformers (or
accelerate, which its Trainer needs) is not installed."""

import io
import itertools
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the models come from configs: never the hub
transformers = pytest.importorskip("transformers")

import sparseavg  # noqa: E402
from sparseavg import Mask, TrainSettings, magnitude_prune, prunable_parameters  # noqa: E402
from sparseavg.experiment import PlainReporter  # noqa: E402
from sparseavg.training import LoopSettings  # noqa: E402
from sparseavg.utils.files import load_tensors  # noqa: E402

VOCAB, LENGTH = 50, 8
SPE, BATCH = 8, 16  # steps per epoch, sequences per step: 128 training sequences
CONFIG = transformers.BertConfig(
    vocab_size=VOCAB,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=LENGTH,
    type_vocab_size=1,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
# the attention and feed-forward weights of both layers and the word embeddings (not tied: a
# sequence classifier has no output embedding); `*` matches dots, so the second pattern takes
# attention.output.dense, intermediate.dense and output.dense of every layer
PRUNABLE = [
    "bert.embeddings.word_embeddings.weight",
    "bert.encoder.layer.*.attention.self.*.weight",
    "bert.encoder.layer.*.dense.weight",
]
PRUNED_NAMES = ["bert.embeddings.word_embeddings.weight"] + [
    f"bert.encoder.layer.{i}.{part}.weight"
    for i in range(2)
    for part in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    )
]
# 50*16 embeddings + per layer 4*16*16 attention + 2*16*32 feed-forward; then keep 80 % twice
ALIVE = [4896, 4896 - 979, 3917 - 783]
RECIPE = {
    "train": {"epochs": 4, "lr": 1e-2, "weight_decay": 0.01, "swa_lr": 5e-3},
    "pruning": {"cycles": 2, "rewind_epochs": 1},
}


def _sequences(n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` sequences of 5-8 tokens after a [CLS] of id 0, padded with 0 to 8; the label
    says whether one of the tokens 1-5 occurs (about half do)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    ids[:, 0] = 0
    lengths = torch.randint(5, LENGTH + 1, (n,), generator=g)
    attention = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    ids = ids * attention
    labels = ((ids[:, 1:] >= 1) & (ids[:, 1:] <= 5)).any(dim=1).long()
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


TRAIN, TEST = _sequences(SPE * BATCH, seed=0), _sequences(256, seed=1)


def model_fn() -> torch.nn.Module:
    return transformers.BertForSequenceClassification(CONFIG)


def eval_fn(model: torch.nn.Module) -> dict:
    """Accuracy and mean cross-entropy on the held-out sequences. The loss comes from the
    logits: an ensemble's output (EnsembleModule) carries averaged logits and no loss."""
    inputs = {k: TEST[k] for k in ("input_ids", "attention_mask")}
    logits = model(**inputs).logits
    return {
        "accuracy": float((logits.argmax(-1) == TEST["labels"]).float().mean()),
        "loss": float(F.cross_entropy(logits, TEST["labels"])),
    }


def plain_loop(model, mask, seed, settings):
    """AdamW on dict batches, the recipe's learning rate per step, the mask kept by attach."""
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    g = torch.Generator().manual_seed(seed)
    with sparseavg.attach(model, mask, opt):
        for epoch in settings.epoch_range:
            order = torch.randperm(SPE * BATCH, generator=g)
            total = 0.0
            for i in range(SPE):
                for group in opt.param_groups:
                    group["lr"] = settings.learning_rate(epoch * SPE + i, SPE)
                batch = {k: v[order[i * BATCH : (i + 1) * BATCH]] for k, v in TRAIN.items()}
                loss = model(**batch).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
            settings.end_epoch(model, total / SPE)


def _check_swamp_run(result, particles: int) -> None:
    """What every SWAMP run of this model must satisfy, whichever loop trained it."""
    headline = result.headline
    assert [r["cycle"] for r in headline] == [0, 1, 2]
    assert [r["alive"] for r in headline] == ALIVE
    # the dense model learned the task (the majority class is 56 % of the test sequences)
    assert headline[0]["accuracy"] >= 0.9
    masks = [Mask.load(result.path / f"cycle_0{c}" / "mask.safetensors") for c in range(3)]
    assert [m.num_alive for m in masks] == ALIVE
    assert all(list(m) == PRUNED_NAMES for m in masks)
    for looser, tighter in itertools.pairwise(masks):  # pruned stays pruned
        assert all(bool((looser[n] | ~tighter[n]).all()) for n in tighter)
    state, mask = result.load()
    assert mask == masks[-1]
    for name in mask:
        assert int((state[name][~mask[name]] != 0).sum()) == 0, name
    # the combined model is the uniform average of the particles (each with SWA)
    last = result.path / "cycle_02"
    parts = [load_tensors(last / f"ingredient_{k}" / "final.safetensors") for k in range(particles)]
    combined = load_tensors(last / "combined.safetensors")
    average = sparseavg.uniform_average(parts, mask=mask)
    assert combined.keys() == average.keys()
    assert all(torch.equal(average[k], combined[k]) for k in combined)
    infos = [
        json.loads((last / f"ingredient_{k}" / "info.json").read_text()) for k in range(particles)
    ]
    assert [i["swa_count"] for i in infos] == [1] * particles  # the last 25 % of 4 epochs
    assert all(math.isfinite(i["final_loss"]) for i in infos)
    # a plain state_dict: a fresh model of the same config loads it strictly, and computes
    fresh = model_fn()
    fresh.load_state_dict(state, strict=True)
    fresh.eval()
    with torch.no_grad():
        assert eval_fn(fresh)["accuracy"] == headline[-1]["accuracy"]


def test_swamp_on_a_tiny_bert_with_its_own_loop(tmp_path, one_thread):
    stream = io.StringIO()
    result = sparseavg.swamp(
        model_fn,
        plain_loop,
        eval_fn,
        particles=2,
        runs_dir=tmp_path,
        name="tokens",
        config=RECIPE,
        prunable=PRUNABLE,
        progress=PlainReporter(stream),
    )
    assert result.path.name.startswith("swamp-tokens-BertForSequenceClassification-")
    assert "prunable: 13 tensors, 4,896 weights: bert.embeddings.word_embeddings" in (
        stream.getvalue()
    )
    _check_swamp_run(result, particles=2)


# -- the user's Trainer -----------------------------------------------------------------------


@pytest.fixture
def hf():
    pytest.importorskip("accelerate")  # the Trainer needs it
    from sparseavg.integrations import huggingface

    return huggingface


def _args(output_dir, **kw) -> "transformers.TrainingArguments":
    return transformers.TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=BATCH,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        **kw,
    )


class _Spy(transformers.TrainerCallback):
    """The learning rate of every optimizer step, and whether the gradients of the weights
    that are 0 are 0 when the step comes (after gradient clipping)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.zero_grads_of_zeros: list[bool] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kw):
        self.lrs.append(optimizer.param_groups[0]["lr"])
        params = dict(model.named_parameters())
        self.zero_grads_of_zeros.append(
            all(bool((params[n].grad[params[n] == 0] == 0).all()) for n in PRUNED_NAMES)
        )


def test_swamp_with_the_users_trainer(tmp_path, monkeypatch, one_thread, hf):
    """trainer_train_fn: every ingredient is a Trainer fit under the recipe's schedule, seed
    and epochs; the mask is kept, SWA and the epoch losses reach the engine; nothing is
    written outside the run directory and the Trainer's output_dir."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    rows = [{k: v[i] for k, v in TRAIN.items()} for i in range(SPE * BATCH)]
    spy = _Spy()
    expected: list[float] = []

    def make_trainer(model, args):
        return transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[spy])

    base = hf.trainer_train_fn(make_trainer, _args(tmp_path / "hf", max_grad_norm=0.5))

    def train_fn(model, mask, seed, settings):
        first = settings.start_epoch * SPE
        steps = len(settings.epoch_range) * SPE
        expected.extend(settings.learning_rate(first + i, SPE) for i in range(steps))
        base(model, mask, seed, settings)

    result = sparseavg.swamp(
        model_fn,
        train_fn,
        eval_fn,
        particles=2,
        runs_dir=tmp_path / "runs",
        name="tokens",
        config=RECIPE,
        prunable=PRUNABLE,
        progress=False,
    )
    _check_swamp_run(result, particles=2)
    # the dense run to the rewind point (1 epoch), then 2 particles x 3 epochs in 3 cycles
    assert len(spy.lrs) == len(expected) == SPE + 3 * 2 * 3 * SPE
    assert all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(spy.lrs, expected, strict=True))
    assert spy.lrs[0] == 1e-2 and spy.lrs[-SPE:] == [5e-3] * SPE  # peak; SWA's constant rate
    assert all(spy.zero_grads_of_zeros)  # masked before clipping, not only before the step
    # epochs.jsonl: each particle epoch logs the rate its last optimizer step ran at
    logged = [r["lr"] for r in map(json.loads, (result.path / "epochs.jsonl").open())]
    last_steps = spy.lrs[SPE + SPE - 1 :: SPE]
    assert len(logged) == len(last_steps) == 3 * 2 * 3
    assert all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(logged, last_steps, strict=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "hf", "runs"]
    assert list(cwd.iterdir()) == [] and list((tmp_path / "hf").iterdir()) == []


def test_trainer_train_fn_refusals(tmp_path, hf):
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        args = _args(tmp_path, load_best_model_at_end=True, eval_strategy="no")
        hf.trainer_train_fn(lambda m, a: transformers.Trainer(model=m, args=a), args)

    other = model_fn()
    train_fn = hf.trainer_train_fn(
        lambda m, a: transformers.Trainer(model=other, args=a), _args(tmp_path)
    )
    settings = LoopSettings(TrainSettings(epochs=1), start_epoch=0, stop_epoch=1)
    with pytest.raises(ValueError, match="around the model it is given"):
        train_fn(model_fn(), Mask({}), 0, settings)
    # no epoch to train (the dense run to a rewind point at epoch 0): no Trainer either
    train_fn(model_fn(), Mask({}), 0, LoopSettings(TrainSettings(epochs=1), 0, 0))
    # a recipe whose mask moves during training (gmp): the Trainer's callback keeps one mask
    from sparseavg.pruning.rigl import RigLSchedule

    moving = LoopSettings(TrainSettings(epochs=1), start_epoch=0, stop_epoch=1)
    moving.schedule = RigLSchedule()
    with pytest.raises(ValueError, match="changes it during training"):
        train_fn(model_fn(), Mask({}), 0, moving)


def test_mask_callback_keeps_tied_embeddings_pruned_in_a_trainer_fit(tmp_path, one_thread, hf):
    """A masked LM ties its decoder to the word embeddings: one prunable tensor under its
    first name, pruned under both, and a state_dict a fresh model loads strictly."""
    config = transformers.BertConfig(**{**CONFIG.to_dict(), "num_hidden_layers": 1})
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config)
    decoder = model.cls.predictions.decoder.weight
    assert decoder is model.bert.embeddings.word_embeddings.weight
    tied = ["*.word_embeddings.weight", "cls.predictions.decoder.weight"]
    weights = prunable_parameters(model, include=[*tied, "*dense.weight"])
    assert "cls.predictions.decoder.weight" not in weights
    assert next(iter(weights)) == "bert.embeddings.word_embeddings.weight"
    mask = magnitude_prune(weights, Mask.ones_like(weights), fraction=0.5)
    rows = [
        {"input_ids": TRAIN["input_ids"][i], "labels": TRAIN["input_ids"][i]} for i in range(64)
    ]
    keep = hf.MaskCallback(mask)
    args = _args(tmp_path, num_train_epochs=2, learning_rate=1e-2, weight_decay=0.1)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[keep])
    before = decoder.detach().clone()
    trainer.train()
    assert not keep.attached
    pruned = ~mask["bert.embeddings.word_embeddings.weight"]
    assert int((decoder[pruned] != 0).sum()) == 0
    assert not torch.equal(decoder[~pruned], before[~pruned])  # the survivors trained
    moments = trainer.optimizer.state[decoder]["exp_avg"]
    assert int((moments[pruned] != 0).sum()) == 0
    for name, keep_mask in mask.items():
        assert int((dict(model.named_parameters())[name][~keep_mask] != 0).sum()) == 0
    fresh = transformers.BertForMaskedLM(config)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(fresh.cls.predictions.decoder.weight, decoder)


def test_the_docs_block_runs(tmp_path, monkeypatch, one_thread, hf):
    """docs/own-model.md's Hugging Face block, as written, with this file's model_fn, eval_fn
    and data."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "own-model.md").read_text()
    blocks = re.findall(r"```py\n(from transformers import Trainer.*?)```", readme, flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    rows = [{k: v[i] for k, v in TRAIN.items()} for i in range(SPE * BATCH)]
    namespace = {"sparseavg": sparseavg, "model_fn": model_fn, "eval_fn": eval_fn}
    namespace["train_dataset"] = rows
    exec(compile(blocks[0], "docs/own-model.md", "exec"), namespace)
    result = namespace["result"]
    assert result.path.resolve().parent == (tmp_path / "runs").resolve()
    _check_swamp_run(result, particles=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf-out", "runs"]
