"""SWAMP on your own model and training loop: a small Transformer sequence classifier.

The model (token embeddings, learned positions, ``nn.TransformerEncoder`` with LayerNorm, no
BatchNorm, mean pooling, a linear head) and its data are written here; sparseavg only gets
three functions: ``model_fn`` builds the model, ``train_fn`` trains one particle (AdamW, the
mask kept by ``sparseavg.attach``, the recipe's learning rate per step, ``settings.end_epoch``
after every epoch for SWA), ``eval_fn`` measures it. ``sparseavg.swamp`` runs the cycles:
``particles`` copies per cycle from the rewound ticket with different seeds, SWA over the last
quarter of their epochs, averaged, pruned by global magnitude (keep 80 % per cycle).

The task: sequences of 16 tokens from a vocabulary of 32; the class is the quarter of the
vocabulary (tokens 0-7, 8-15, ...) that 3 of the tokens were drawn from, the other 13 being
uniform, so the most frequent quarter usually but not always gives it away.

What to prune is named by glob patterns: the default (every conv and linear weight) would
miss the attention's input projection, which ``nn.MultiheadAttention`` holds as a bare
parameter (``in_proj_weight``), and the embeddings; the head stays dense here.

    python examples/custom_model_swamp.py      # about 2 min on one CPU core
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sparseavg
from sparseavg import LoopSettings, Mask

VOCAB, LENGTH, CLASSES = 32, 16, 4
BATCH = 64
PRUNABLE = [
    "embed.weight",
    "encoder.layers.*.self_attn.in_proj_weight",
    "encoder.layers.*.self_attn.out_proj.weight",
    "encoder.layers.*.linear?.weight",  # the feed-forward block: linear1, linear2
]


class SequenceClassifier(nn.Module):
    """``(batch, LENGTH)`` int64 tokens -> ``(batch, CLASSES)`` logits."""

    def __init__(self, dim: int = 32, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.position = nn.Parameter(0.02 * torch.randn(1, LENGTH, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.encoder(self.embed(tokens) + self.position)
        return self.head(self.norm(h).mean(dim=1))


def make_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` sequences ``(n, LENGTH)`` and their classes ``(n,)``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    tokens = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
    quarter = VOCAB // CLASSES
    hint = labels[:, None] * quarter + torch.randint(0, quarter, (n, 3), generator=g)
    slots = torch.rand(n, LENGTH, generator=g).argsort(dim=1)[:, :3]  # 3 random positions
    tokens.scatter_(1, slots, hint)
    return tokens, labels


def main(
    epochs: int = 8,
    cycles: int = 5,
    particles: int = 3,
    train_size: int = 4096,
    runs_dir: str | Path = "runs/examples",
    seed: int = 0,
    progress: bool = True,
) -> sparseavg.OwnRun:
    """Run (or resume: run it again) SWAMP and print accuracy by sparsity.

    Args:
        epochs: epochs per particle (the first, up to the rewind point, is trained once).
        cycles: pruning cycles after the dense one; each keeps 80 % of the prunable weights.
        particles: SWAMP's particles per cycle.
        train_size: training sequences (1024 held out for the test).
        runs_dir: where the run directory goes.
        seed: the run's seed (initialisation, particles' batch orders).
        progress: log lines on stderr.

    Returns:
        The finished run (``.headline``: the averaged model's row per cycle).
    """
    train_x, train_y = make_data(train_size, seed=1)
    test_x, test_y = make_data(1024, seed=2)

    def model_fn() -> nn.Module:
        return SequenceClassifier()

    def train_fn(model: nn.Module, mask: Mask, seed: int, settings: LoopSettings) -> None:
        opt = torch.optim.AdamW(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        steps = len(train_x) // BATCH  # per epoch
        g = torch.Generator().manual_seed(seed)  # the particle's batch order
        with sparseavg.attach(model, mask, opt):
            for epoch in settings.epoch_range:
                order = torch.randperm(len(train_x), generator=g)
                total = 0.0
                for i in range(steps):
                    lr = settings.learning_rate(epoch * steps + i, steps)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    idx = order[i * BATCH : (i + 1) * BATCH]
                    loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.item()
                settings.end_epoch(model, total / steps, lr=lr)  # SWA snapshot, mask check, log

    def eval_fn(model: nn.Module) -> dict[str, float]:
        logits = model(test_x)
        return {
            "accuracy": float((logits.argmax(dim=1) == test_y).float().mean()),
            "loss": float(F.cross_entropy(logits, test_y)),
        }

    weights = sparseavg.prunable_parameters(SequenceClassifier(), include=PRUNABLE)
    print(f"prunable: {len(weights)} tensors, {sum(w.numel() for w in weights.values()):,} weights")
    for name, w in weights.items():
        print(f"  {name} {tuple(w.shape)}")

    result = sparseavg.swamp(
        model_fn,
        train_fn,
        eval_fn,
        particles=particles,
        runs_dir=runs_dir,
        name="tokens",
        prunable=PRUNABLE,
        config={
            "seed": seed,
            "train": {"epochs": epochs, "lr": 3e-3, "weight_decay": 0.01, "swa_lr": 1e-3},
            "pruning": {"cycles": cycles, "rewind_epochs": 1},
        },
        progress=progress,
    )

    print(f"\n{result.path}")
    print("| cycle | sparsity % | alive | SWAMP % | particles' mean % |")
    print("|---:|---:|---:|---:|---:|")
    for row in result.headline:
        parts = [
            r["accuracy"]
            for r in result.rows
            if r["role"] == "ingredient" and r["cycle"] == row["cycle"]
        ]
        mean = 100 * sum(parts) / len(parts)
        print(
            f"| {row['cycle']} | {100 * row['sparsity']:.1f} | {row['alive']:,} | "
            f"{100 * row['accuracy']:.2f} | {mean:.2f} |"
        )
    return result


if __name__ == "__main__":
    main()
