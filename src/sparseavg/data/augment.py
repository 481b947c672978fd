"""Data augmentation as batched tensor operations: random crop after padding, random flip."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Augmentation:
    """Random crop and horizontal flip of a whole batch at once, on the batch's device.

    Works on images ``(B, C, H, W)`` (crop in H and W, flip W) and sequences ``(B, C, L)``
    (crop and flip along L). Random numbers are drawn on the CPU from the given generator,
    in a fixed order (crop offsets, then flips), and moved to the batch's device, so the
    same generator state gives the same output on every device.

    Attributes:
        crop_padding: pad each spatial side by this many pixels (steps), then crop a window of
            the original size at a uniformly random offset in ``[0, 2 * padding]``. 0 disables
            cropping.
        horizontal_flip: reverse the last dimension of each sample with probability 0.5.
        fill: the value of the padded pixels, one per channel (empty: 0 in every channel).
            For normalised images, ``-mean / std`` per channel pads with black, as padding the
            raw image before normalising does (torchvision's ``RandomCrop(padding=4)`` before
            ``Normalize``, the SMS code's CIFAR transform).
    """

    crop_padding: int = 0
    horizontal_flip: bool = False
    fill: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")
        object.__setattr__(self, "fill", tuple(float(v) for v in self.fill))

    @property
    def enabled(self) -> bool:
        """Whether calling this augmentation changes anything."""
        return self.crop_padding > 0 or self.horizontal_flip

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Augment a batch.

        Args:
            x: ``(B, C, H, W)`` or ``(B, C, L)`` batch on any device.
            generator: CPU generator the randomness is drawn from.

        Returns:
            A new tensor of the same shape, dtype and device as ``x`` (``x`` itself when
            nothing is enabled).
        """
        if x.dim() not in (3, 4):
            raise ValueError(
                f"expected a (B, C, L) or (B, C, H, W) batch, got shape {tuple(x.shape)}"
            )
        out = x
        if self.crop_padding > 0:
            out = random_crop(out, self.crop_padding, generator, fill=self.fill or None)
        if self.horizontal_flip:
            out = random_flip(out, generator)
        return out


def random_crop(
    x: Tensor,
    padding: int,
    generator: torch.Generator,
    *,
    fill: tuple[float, ...] | None = None,
) -> Tensor:
    """Pad every spatial dim of ``x`` by ``padding`` on each side, crop back at random offsets.

    Args:
        x: ``(B, C, *spatial)`` with one or two spatial dims.
        padding: pixels (steps) added on each side of each spatial dim.
        generator: CPU generator; draws ``len(spatial) * B`` integers in ``[0, 2 * padding]``.
        fill: the padded pixels' value in each of the ``C`` channels (``None``: zeros).

    Returns:
        ``(B, C, *spatial)``: sample ``b`` is the window of the padded input starting at its
        own offsets.
    """
    batch, _, *spatial = x.shape
    ndim = len(spatial)
    padded = _pad(x, padding, fill)
    offsets = torch.randint(0, 2 * padding + 1, (ndim, batch), generator=generator)
    offsets = host_to_device(offsets, x.device)
    # Index the windows of the padded batch (an unfold view, no copy) at each sample's
    # offsets: one copy, ~2.6x faster on a CPU than indexing with broadcast index grids.
    windows = padded
    for k, size in enumerate(spatial):
        windows = windows.unfold(2 + k, size, 1)  # (B, C, n_1.., S_1..): n_k = 2 * padding + 1
    index: tuple[Tensor | slice, ...] = (
        torch.arange(batch, device=x.device),
        slice(None),
        *offsets.unbind(0),
    )
    return windows[index]


def _pad(x: Tensor, padding: int, fill: tuple[float, ...] | None) -> Tensor:
    """``x`` ``(B, C, *spatial)`` padded by ``padding`` on each side of each spatial dim with
    ``fill[c]`` in channel ``c`` (zeros for ``None``): one batched copy either way."""
    ndim = x.dim() - 2
    if fill is None:
        return F.pad(x, (padding, padding) * ndim)
    if len(fill) != x.shape[1]:
        raise ValueError(f"fill has {len(fill)} values for {x.shape[1]} channels")
    value = torch.tensor(fill, dtype=x.dtype).view(1, -1, *([1] * ndim))
    shape = (x.shape[0], x.shape[1], *(s + 2 * padding for s in x.shape[2:]))
    padded = host_to_device(value, x.device).expand(shape)
    padded = padded.clone(memory_format=torch.contiguous_format)
    inner = (slice(None), slice(None), *(slice(padding, padding + s) for s in x.shape[2:]))
    padded[inner] = x
    return padded


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Reverse the last dim of each sample of ``x`` with probability 0.5.

    Args:
        x: ``(B, ...)`` batch.
        generator: CPU generator; draws ``B`` uniform numbers.

    Returns:
        Same shape as ``x``: each sample either unchanged or flipped along the last dim.
    """
    flip = host_to_device(torch.rand(x.shape[0], generator=generator) < 0.5, x.device)
    flip = flip.view(x.shape[0], *([1] * (x.dim() - 1)))
    return torch.where(flip, x.flip(-1), x)


def host_to_device(t: Tensor, device: torch.device) -> Tensor:
    """Copy a CPU tensor to ``device`` without waiting for the device.

    A plain ``.to("cuda")`` from ordinary (pageable) memory makes the host wait for
    everything queued on the GPU, once per batch here; from pinned memory with
    ``non_blocking=True`` the copy is queued like a kernel (torch keeps the pinned buffer
    alive until it is done). Elsewhere this is ``t.to(device)``.
    """
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
