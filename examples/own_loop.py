"""Keep a pruning mask in your own PyTorch training loop with ``sparseavg.attach``.

An MLP on MNIST-1D (signals of 40 samples, 10 classes; generated locally, nothing to
download) is trained dense, pruned once by weight magnitude to ``sparsity`` of its linear
weights, and fine-tuned with the mask attached to its AdamW optimizer. The loop is ordinary
PyTorch: ``attach`` hooks ``optimizer.step()``, so the pruned weights and their Adam moments
stay exactly 0 through weight decay and every step.

    python examples/own_loop.py            # about 10 s on one CPU core
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import sparseavg


def make_model() -> nn.Module:
    """Your model: MNIST-1D's ``(batch, 1, 40)`` signals -> 10 logits."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(40, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Share of ``x`` (``(n, 1, 40)``) classified as ``y`` (``(n,)``), in [0, 1]."""
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
    """A plain loop: nothing in it knows about pruning."""
    for _ in range(epochs):
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def main(
    epochs: int = 10,
    finetune_epochs: int = 10,
    sparsity: float = 0.9,
    max_batches: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Train, prune once, fine-tune under the mask; print and return what happened.

    Args:
        epochs: dense training epochs.
        finetune_epochs: epochs with the mask attached.
        sparsity: share of the linear weights pruned, in [0, 1).
        max_batches: stop each epoch after this many batches of 128 (None: the whole epoch).
        seed: initialisation and batch order.

    Returns:
        ``dense``, ``pruned`` (before fine-tuning) and ``sparse`` test accuracy in [0, 1],
        ``sparsity`` of the mask, and ``nonzero_pruned``: pruned weights that are not
        exactly 0 after fine-tuning (always 0).
    """
    data = sparseavg.load_dataset("mnist1d")
    torch.manual_seed(seed)
    model = make_model()
    loader = DataLoader(
        TensorDataset(data.train.x, data.train.y),
        batch_size=128,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    test_x, test_y = data.test.x, data.test.y

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    fit(model, loader, optimizer, epochs, max_batches)
    dense = accuracy(model, test_x, test_y)

    # prune: the smallest `sparsity` of all linear weights by magnitude, across layers
    weights = sparseavg.prunable_parameters(model)  # every Linear weight, not the biases
    mask = sparseavg.magnitude_prune(weights, sparseavg.Mask.ones_like(weights), fraction=sparsity)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    with sparseavg.attach(model, mask, optimizer):  # zeros the pruned weights now, and after
        pruned = accuracy(model, test_x, test_y)  # every step
        fit(model, loader, optimizer, finetune_epochs, max_batches)
    sparse = accuracy(model, test_x, test_y)

    params = dict(model.named_parameters())
    nonzero = sum(int((params[name][~keep] != 0).sum()) for name, keep in mask.items())
    print(mask.format_report())
    print(f"dense accuracy:              {dense:.3f}")
    print(f"pruned to {mask.sparsity:.0%}, no fine-tuning: {pruned:.3f}")
    print(f"after fine-tuning:           {sparse:.3f}")
    print(f"pruned weights that are nonzero: {nonzero}")
    return {
        "dense": dense,
        "pruned": pruned,
        "sparse": sparse,
        "sparsity": mask.sparsity,
        "nonzero_pruned": float(nonzero),
    }


if __name__ == "__main__":
    main()
