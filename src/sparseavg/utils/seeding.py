"""Deterministic seeds derived from a path of parts, so that no global RNG is ever consulted."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on ``parts`` (e.g. ``(seed, "cycle", 3, "ingredient", 1)``).

    Uses SHA-256 of the parts' ``repr``, so it is stable across processes and Python versions
    (unlike ``hash``).
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(*parts: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
