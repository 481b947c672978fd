"""A compact form of a pruned model: the surviving values and where they sit.

For each tensor a :class:`~sparseavg.pruning.Mask` covers, :func:`compress` keeps

- ``<name>:values``: the alive values in row-major order, 1-D, in the tensor's dtype;
- ``<name>:positions``: which positions are alive, as a packed bitmask (uint8, 8 positions a
  byte, the first in the most significant bit: ``numpy.packbits`` order) or as flat int32
  indices, whichever has fewer bytes; nothing when all or none are alive;
- ``<name>:negative_zeros``: which pruned positions hold ``-0.0`` rather than ``+0.0``, in the
  same encodings over the pruned positions; nothing when none does. Masking by multiplication
  (as training does) leaves ``-0.0`` where a negative weight was pruned; keeping its sign is
  what lets :func:`decompress` rebuild the state bit for bit.

Tensors the mask does not cover (biases, normalisation layers, buffers) are kept as they are,
under their own name. The metadata records the format, each tensor's shape and encodings in
the state's order, and a SHA-256 of the stored tensors, so a damaged file is refused rather
than read as other weights. Before anything is allocated, the size of the dense state the
layout claims is checked against the bytes stored (:func:`dense_limit`), so that a small file
claiming a huge tensor is refused rather than filling the memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from ..utils.files import CorruptFileError, load_tensors, save_tensors
from .mask import Mask, MaskError

FORMAT = "sparseavg-sparse/1"

#: how a set of positions is stored: not at all (``none`` / ``all``), or as a tensor
ENCODINGS = ("none", "all", "bitmask", "indices")

_VALUES, _POSITIONS, _NEGATIVE_ZEROS = ":values", ":positions", ":negative_zeros"
_PARTS = (_VALUES, _POSITIONS, _NEGATIVE_ZEROS)
_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)

#: the dense state may be this many times the bytes stored (a float32 model stored as indices
#: and values takes 8 bytes per alive weight, so even one 99.99 % sparse stays below) ...
MAX_EXPANSION = 2**14
#: ... or this many bytes, whichever is larger
MIN_DENSE_LIMIT = 2**26


class Compressed(NamedTuple):
    """What :func:`compress` makes: the tensors to store and the string metadata that
    :func:`decompress` needs (the pair safetensors' ``save`` takes)."""

    tensors: dict[str, Tensor]
    metadata: dict[str, str]


# -- sets of positions ---------------------------------------------------------------------------


def packbits(flags: Tensor) -> Tensor:
    """``(n,)`` bool → ``(ceil(n / 8),)`` uint8, 8 flags a byte, the first in the most
    significant bit, the last byte padded with zeros (as ``numpy.packbits``)."""
    n = flags.numel()
    padded = torch.zeros(math.ceil(n / 8) * 8, dtype=torch.uint8, device=flags.device)
    padded[:n] = flags.reshape(-1)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=flags.device)
    return (padded.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpackbits(packed: Tensor, n: int) -> Tensor:
    """The first ``n`` flags of :func:`packbits`' bytes, as ``(n,)`` bool.

    Raises:
        CorruptFileError: ``packed`` is not ``ceil(n / 8)`` uint8 bytes, or its padding bits
            are not zero.
    """
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != math.ceil(n / 8):
        raise CorruptFileError(
            f"a bitmask of {n} positions is {math.ceil(n / 8)} uint8 bytes, not "
            f"{tuple(packed.shape)} {packed.dtype}"
        )
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    bits = ((packed.unsqueeze(1) >> shifts) & 1).reshape(-1).bool()
    if bool(bits[n:].any()):
        raise CorruptFileError(f"a bitmask of {n} positions has bits set past its end")
    return bits[:n]


def _index_dtype(n: int) -> torch.dtype:
    return torch.int32 if n <= torch.iinfo(torch.int32).max else torch.int64


def encode_positions(flags: Tensor) -> tuple[str, Tensor | None]:
    """The smallest stored form of a 1-D bool tensor: ``("none" | "all", None)``, or
    ``("bitmask", uint8 bytes)`` (``ceil(n / 8)`` bytes), or ``("indices", int32 positions)``
    (4 bytes per ``True``; int64 past 2**31 positions), the bitmask on a tie."""
    n, count = flags.numel(), int(flags.sum())
    if count == 0:
        return "none", None
    if count == n:
        return "all", None
    dtype = _index_dtype(n)
    if count * dtype.itemsize < math.ceil(n / 8):
        return "indices", flags.nonzero().reshape(-1).to(dtype)
    return "bitmask", packbits(flags)


def decode_positions(encoding: str, stored: Tensor | None, n: int) -> Tensor:
    """Invert :func:`encode_positions`: ``(n,)`` bool.

    Raises:
        CorruptFileError: an unknown encoding, a tensor where none belongs or none where one
            does, or a tensor that cannot be this set (wrong size or dtype, indices out of
            range or not increasing).
    """
    if encoding not in ENCODINGS:
        raise CorruptFileError(f"unknown position encoding {encoding!r}")
    if (stored is None) != (encoding in ("none", "all")):
        raise CorruptFileError(f"the {encoding!r} encoding does not fit the stored tensors")
    if encoding == "none":
        return torch.zeros(n, dtype=torch.bool)
    if encoding == "all":
        return torch.ones(n, dtype=torch.bool)
    assert stored is not None
    if encoding == "bitmask":
        return unpackbits(stored, n)
    if stored.dtype != _index_dtype(n) or stored.dim() != 1:
        raise CorruptFileError(
            f"indices into {n} positions are 1-D {_index_dtype(n)}, not "
            f"{tuple(stored.shape)} {stored.dtype}"
        )
    idx = stored.long()
    if idx.numel() and (int(idx[0]) < 0 or int(idx[-1]) >= n or bool((idx.diff() <= 0).any())):
        raise CorruptFileError(f"indices into {n} positions are out of range or not increasing")
    flags = torch.zeros(n, dtype=torch.bool, device=stored.device)
    flags[idx] = True
    return flags


# -- states --------------------------------------------------------------------------------------


def _digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors``, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _as_mask(mask: Mask | Mapping[str, Tensor]) -> Mask:
    """``mask`` as a :class:`Mask` (a plain ``name -> bool tensor`` mapping is accepted, as
    :func:`~sparseavg.attach` accepts it)."""
    if isinstance(mask, Mask):
        return mask
    if not isinstance(mask, Mapping):
        raise MaskError(
            f"mask must be a Mask or a name -> bool tensor mapping, not {type(mask).__name__}"
        )
    return Mask(mask)


def compress(state: Mapping[str, Tensor], mask: Mask | Mapping[str, Tensor]) -> Compressed:
    """The compact form of ``state`` under ``mask`` (see the module's docstring).

    Args:
        state: ``name -> tensor``, e.g. a model's ``state_dict()``, holding zeros (``+0.0`` or
            ``-0.0``) wherever ``mask`` is ``False``.
        mask: a :class:`Mask` or a plain ``name -> bool tensor`` mapping; covers some of
            ``state``'s tensors, each with its shape.

    Returns:
        :class:`Compressed`: tensors on ``state``'s devices and the metadata strings.

    Raises:
        MaskError: ``mask`` is not a mapping of bool tensors, names a tensor that ``state``
            lacks or shapes it differently, or a pruned position holds a value other than
            zero.
        ValueError: a name made for a masked tensor (``<name>:values`` ...) is also a name in
            ``state``.
    """
    mask = _as_mask(mask)
    mask.validate(state)
    clash = [n + part for n in mask for part in _PARTS if n + part in state]
    if clash:
        raise ValueError(
            f"cannot compress: {clash[:3]} are tensors of the state and also the names of "
            "masked tensors' parts"
        )
    tensors: dict[str, Tensor] = {}
    layout: list[dict[str, Any]] = []
    for name, t in state.items():
        t = t.detach()
        if name not in mask:
            tensors[name] = t
            layout.append({"name": name})
            continue
        flat = t.reshape(-1)
        alive = mask[name].to(t.device).reshape(-1)
        pruned = flat[~alive]
        if bool((pruned != 0).any()):
            raise MaskError(
                f"{name!r} holds {int((pruned != 0).sum())} non-zero values where the mask "
                "prunes; apply the mask first (Mask.applied)"
            )
        negative = (
            torch.signbit(pruned)
            if t.is_floating_point()
            else torch.zeros(pruned.numel(), dtype=torch.bool, device=t.device)
        )
        positions, positions_t = encode_positions(alive)
        negative_zeros, negative_t = encode_positions(negative.reshape(-1))
        tensors[name + _VALUES] = flat[alive]
        if positions_t is not None:
            tensors[name + _POSITIONS] = positions_t
        if negative_t is not None:
            tensors[name + _NEGATIVE_ZEROS] = negative_t
        layout.append(
            {
                "name": name,
                "shape": list(t.shape),
                "positions": positions,
                "negative_zeros": negative_zeros,
            }
        )
    metadata = {
        "format": FORMAT,
        "layout": json.dumps(layout),
        "sha256": _digest(tensors),
    }
    return Compressed(tensors, metadata)


def _entry_ok(entry: object) -> bool:
    """Whether ``entry`` is a layout entry: ``{"name"}`` for a tensor stored as it is, plus
    ``"shape"``, ``"positions"`` and ``"negative_zeros"`` for a masked one."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return False
    if "shape" not in entry:
        return True
    shape = entry["shape"]
    return (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        and entry.get("positions") in ENCODINGS
        and entry.get("negative_zeros") in ENCODINGS
    )


def _layout(text: str | None) -> list[dict[str, Any]]:
    """The metadata's layout, checked for the fields :func:`decompress` reads."""
    try:
        layout = json.loads(text or "")
    except json.JSONDecodeError:
        raise CorruptFileError("its layout is not valid JSON") from None
    if not isinstance(layout, list):
        raise CorruptFileError("its layout is not a list of entries")
    names: set[str] = set()
    for entry in layout:
        if not _entry_ok(entry) or entry["name"] in names:
            raise CorruptFileError(f"its layout has a malformed or repeated entry: {entry!r:.200}")
        names.add(entry["name"])
    return layout


def dense_limit(stored_bytes: int) -> int:
    """The most bytes of dense state a sparse file of ``stored_bytes`` may claim:
    :data:`MAX_EXPANSION` times that, and at least :data:`MIN_DENSE_LIMIT`."""
    return max(MIN_DENSE_LIMIT, MAX_EXPANSION * stored_bytes)


def _stored_bytes(tensors: Mapping[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _check_sizes(
    layout: list[dict[str, Any]], tensors: Mapping[str, Tensor], max_bytes: int | None
) -> None:
    """Refuse, before anything is allocated, a layout whose sizes do not fit the stored
    tensors, or whose dense state is larger than ``max_bytes`` (default:
    :func:`dense_limit` of the stored bytes)."""
    stored = _stored_bytes(tensors)
    limit = dense_limit(stored) if max_bytes is None else max_bytes
    claimed = 0
    for entry in layout:
        name = entry["name"]
        if "shape" not in entry:
            if name in tensors:
                claimed += tensors[name].numel() * tensors[name].element_size()
            continue
        n = math.prod(entry["shape"])
        values = tensors.get(name + _VALUES)
        if values is None:
            raise CorruptFileError(f"the tensor {name + _VALUES!r} is missing")
        encoding = entry["positions"]
        alive = {"none": 0, "all": n}.get(encoding)
        if alive is not None and values.numel() != alive:
            raise CorruptFileError(
                f"{name!r} has {alive} alive positions but {tuple(values.shape)} values"
            )
        if values.numel() > n:
            raise CorruptFileError(f"{name!r} has {n} positions but {values.numel()} values")
        # the dense tensor, and the flags and signs built beside it
        claimed += n * (2 * values.element_size() + 2)
    if claimed > limit:
        why = (
            f"max_bytes={max_bytes}"
            if max_bytes is not None
            else f"{MAX_EXPANSION} times the {stored} bytes stored, or {MIN_DENSE_LIMIT} bytes; "
            "pass max_bytes= to load a file you trust"
        )
        raise CorruptFileError(
            f"its layout claims a dense state of {claimed} bytes, more than {why}"
        )


def decompress(
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str],
    *,
    max_bytes: int | None = None,
) -> dict[str, Tensor]:
    """Rebuild the state :func:`compress` was given, bit for bit, in its order.

    Args:
        tensors, metadata: what :func:`compress` returned (or a file's tensors and metadata).
        max_bytes: the most bytes the dense state (and the flags built beside it) may take;
            default :func:`dense_limit` of the stored tensors' bytes. Checked before anything
            is allocated.

    Returns:
        ``name -> tensor`` with the original shapes and dtypes, on the tensors' device.

    Raises:
        CorruptFileError: the metadata is not of this format, the tensors' checksum differs
            from the recorded one, tensors and layout do not fit together, or the layout
            claims a dense state larger than ``max_bytes``.
    """
    found = metadata.get("format")
    if found != FORMAT:
        raise CorruptFileError(
            f"not a sparse model file of sparseavg (format {found!r}, expected {FORMAT!r})"
        )
    layout = _layout(metadata.get("layout"))
    if metadata.get("sha256") != _digest(tensors):
        raise CorruptFileError("its tensors' checksum differs from the recorded one: damaged")
    _check_sizes(layout, tensors, max_bytes)
    used: set[str] = set()

    def take(key: str, needed: bool = True) -> Tensor | None:
        if key not in tensors:
            if needed:
                raise CorruptFileError(f"the tensor {key!r} is missing")
            return None
        used.add(key)
        return tensors[key]

    state: dict[str, Tensor] = {}
    for entry in layout:
        name = entry["name"]
        if "shape" not in entry:
            state[name] = take(name)  # type: ignore[assignment]
            continue
        shape, n = entry["shape"], math.prod(entry["shape"])
        values = take(name + _VALUES)
        assert values is not None
        alive = decode_positions(entry["positions"], take(name + _POSITIONS, False), n)
        count = int(alive.sum())
        if values.dim() != 1 or values.numel() != count:
            raise CorruptFileError(
                f"{name!r} has {count} alive positions but {tuple(values.shape)} values"
            )
        negative = decode_positions(
            entry["negative_zeros"], take(name + _NEGATIVE_ZEROS, False), n - count
        )
        if bool(negative.any()) and not values.is_floating_point():
            raise CorruptFileError(f"{name!r} is {values.dtype} and has no negative zeros")
        alive = alive.to(values.device)
        out = torch.zeros(n, dtype=values.dtype, device=values.device)
        out[alive] = values
        if bool(negative.any()):
            signs = torch.zeros(n - count, dtype=values.dtype, device=values.device)
            out[~alive] = signs.masked_fill_(negative.to(values.device), -0.0)
        state[name] = out.reshape(shape)
    extra = sorted(set(tensors) - used)
    if extra:
        raise CorruptFileError(f"tensors {extra[:3]} are not in its layout")
    return state


# -- files ---------------------------------------------------------------------------------------


def save_sparse(
    path: str | os.PathLike[str], state: Mapping[str, Tensor], mask: Mask | Mapping[str, Tensor]
) -> None:
    """Write :func:`compress` ``(state, mask)`` to ``path`` as safetensors, atomically.

    Raises:
        MaskError, ValueError: as :func:`compress`.
    """
    tensors, metadata = compress(state, mask)
    save_tensors(path, tensors, metadata)


def load_sparse(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    *,
    max_bytes: int | None = None,
) -> dict[str, Tensor]:
    """The dense state a :func:`save_sparse` file holds: the same names, order, shapes, dtypes
    and bits as the state it was written from, ready for ``model.load_state_dict``.

    The file is read and checked on the CPU, then the state is moved to ``device`` (``"meta"``
    gives tensors without data: shapes and dtypes only). ``max_bytes``: as
    :func:`decompress`; by default a file may not claim a dense state larger than
    :func:`dense_limit` of its stored bytes.

    Raises:
        FileNotFoundError: no such file.
        CorruptFileError: truncated, damaged, not a file :func:`save_sparse` wrote, or
            claiming a dense state larger than ``max_bytes`` (a one-line message naming the
            file).
    """
    p = Path(path)
    target = torch.device(device)
    tensors = load_tensors(p, device="cpu")
    try:
        with safe_open(str(p), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CorruptFileError(f"{p}: not a readable safetensors file ({err})") from None
    try:
        state = decompress(tensors, metadata, max_bytes=max_bytes)
    except CorruptFileError as err:
        raise CorruptFileError(f"{p}: {err}") from None
    if target == torch.device("cpu"):
        return state
    return {name: t.to(target) for name, t in state.items()}
