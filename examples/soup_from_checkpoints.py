"""Uniform and greedy soups of fine-tuned checkpoints that share a mask (Sparse Model Soups).

First this script makes the checkpoints you would already have: a small conv net with
BatchNorm on MNIST-1D is trained, pruned once by magnitude, and fine-tuned ``ingredients``
times from the same pruned weights with different seeds (batch orders), each saved as a
``state_dict`` file next to the mask. Then it loads them back and soups them:

- the uniform soup: ``sparseavg.uniform_average`` of all of them;
- the greedy soup: ``sparseavg.greedy_soup`` adds them best first while the held-out accuracy
  does not drop.

Averaged weights need their BatchNorm statistics recomputed: ``sparseavg.recalibrate_bn_on``
runs batches of your own DataLoader through the model (for every candidate soup the greedy
search scores, too). Since every ingredient holds exact zeros where the mask prunes, so does
every average.

    python examples/soup_from_checkpoints.py     # about 15 s on one CPU core
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import sparseavg
from sparseavg import Mask


def make_model() -> nn.Module:
    """``(batch, 1, 40)`` signals -> 10 logits; three conv + BatchNorm blocks."""

    def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv1d(c_in, c_out, 5, stride, padding=2), nn.BatchNorm1d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(1, 16, 1), *block(16, 32, 2), *block(32, 32, 2), nn.Flatten(), nn.Linear(320, 10)
    )


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Share of ``x`` classified as ``y``, in [0, 1] (eval mode: BatchNorm's running stats)."""
    model.eval()
    with torch.no_grad():
        correct = float((model(x).argmax(dim=1) == y).float().mean())
    model.train()
    return correct


def fit(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    max_batches: int | None,
) -> None:
    for _ in range(epochs):
        for x, y in itertools.islice(loader, max_batches):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def nonzero_pruned(state: Mapping[str, Tensor], mask: Mask) -> int:
    """How many weights the mask prunes are not exactly 0 in ``state``."""
    return sum(int((state[name][~keep] != 0).sum()) for name, keep in mask.items())


def make_checkpoints(
    folder: Path,
    *,
    epochs: int,
    finetune_epochs: int,
    sparsity: float,
    ingredients: int,
    max_batches: int | None,
    seed: int,
) -> None:
    """Train the parent, prune it, fine-tune it ``ingredients`` times: ``folder`` gets
    ``mask.safetensors`` and ``ingredient_<k>.pt`` (``torch.save`` of a state_dict)."""
    data = sparseavg.load_dataset("mnist1d", val_fraction=0.1)
    train = TensorDataset(data.train.x, data.train.y)

    def loader(seed: int) -> DataLoader:
        g = torch.Generator().manual_seed(seed)
        return DataLoader(train, batch_size=128, shuffle=True, generator=g)

    torch.manual_seed(seed)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    fit(model, loader(seed), opt, epochs, max_batches)
    weights = sparseavg.prunable_parameters(model)  # the conv and linear weights
    mask = sparseavg.magnitude_prune(weights, Mask.ones_like(weights), fraction=sparsity)
    parent = mask.applied(model.state_dict())
    folder.mkdir(parents=True, exist_ok=True)
    mask.save(folder / "mask.safetensors")
    for k in range(ingredients):
        model.load_state_dict(parent)
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
        with sparseavg.attach(model, mask, opt):
            fit(model, loader(seed + 1 + k), opt, finetune_epochs, max_batches)
        torch.save(model.state_dict(), folder / f"ingredient_{k}.pt")


def main(
    epochs: int = 10,
    finetune_epochs: int = 5,
    sparsity: float = 0.8,
    ingredients: int = 3,
    max_batches: int | None = None,
    bn_batches: int = 20,
    checkpoint_dir: str | Path = "runs/examples/soup",
    seed: int = 0,
) -> dict[str, object]:
    """Make the checkpoints, load them back, soup them; print and return the accuracies.

    Args:
        epochs: the parent's dense training epochs.
        finetune_epochs: each ingredient's fine-tuning epochs under the mask.
        sparsity: share of the conv and linear weights pruned, in [0, 1).
        ingredients: how many fine-tuned checkpoints.
        max_batches: stop each epoch after this many batches of 128 (None: whole epochs).
        bn_batches: training batches that recompute a soup's BatchNorm statistics.
        checkpoint_dir: where the checkpoints are written (overwritten).
        seed: the parent's initialisation and batch order; ingredient k uses seed + 1 + k.

    Returns:
        Test accuracies in [0, 1]: ``ingredients`` (a list), ``uniform``, ``greedy``; the
        greedy soup's ``selected`` checkpoints (indices, best first); and ``nonzero_pruned``,
        the pruned weights that are not exactly 0 in either soup (0).
    """
    folder = Path(checkpoint_dir)
    make_checkpoints(
        folder,
        epochs=epochs,
        finetune_epochs=finetune_epochs,
        sparsity=sparsity,
        ingredients=ingredients,
        max_batches=max_batches,
        seed=seed,
    )

    # -- from here on, only the files and your data ------------------------------------------
    mask = Mask.load(folder / "mask.safetensors")
    paths = sorted(folder.glob("ingredient_*.pt"))
    states = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
    data = sparseavg.load_dataset("mnist1d", val_fraction=0.1)  # the same held-out split
    val = data.val
    assert val is not None
    recalibration = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=128)
    model = make_model()

    def recalibrated(state: Mapping[str, Tensor]) -> nn.Module:
        model.load_state_dict(state)
        batches = itertools.islice(recalibration, bn_batches)  # (x, y): model(x) runs
        sparseavg.recalibrate_bn_on(model, batches)  # exact average over the batches
        return model

    def held_out(state: Mapping[str, Tensor]) -> float:
        return accuracy(recalibrated(state), val.x, val.y)

    singles = []
    for path, state in zip(paths, states, strict=True):
        model.load_state_dict(state)  # as fine-tuned, with its own BatchNorm statistics
        singles.append(accuracy(model, data.test.x, data.test.y))
        print(f"{path.name}: {singles[-1]:.3f}")

    uniform = sparseavg.uniform_average(states, mask=mask)
    uniform_acc = accuracy(recalibrated(uniform), data.test.x, data.test.y)
    print(f"uniform soup of {len(states)}: {uniform_acc:.3f}")

    greedy = sparseavg.greedy_soup(states, held_out, mask=mask)
    greedy_acc = accuracy(recalibrated(greedy.state), data.test.x, data.test.y)
    names = ", ".join(paths[i].name for i in greedy.selected)
    print(f"greedy soup of {names}: {greedy_acc:.3f} (held out: {greedy.score:.3f})")

    nonzero = nonzero_pruned(uniform, mask) + nonzero_pruned(greedy.state, mask)
    print(f"sparsity {mask.sparsity:.1%}; pruned weights that are nonzero in the soups: {nonzero}")
    return {
        "ingredients": singles,
        "uniform": uniform_acc,
        "greedy": greedy_acc,
        "selected": list(greedy.selected),
        "candidate_scores": list(greedy.candidate_scores),
        "nonzero_pruned": nonzero,
        "sparsity": mask.sparsity,
    }


if __name__ == "__main__":
    main()
