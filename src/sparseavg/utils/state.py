"""Plain model states (``dict[str, Tensor]``) and their conversion to and from modules."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

State = dict[str, Tensor]


def clone_state(
    state: Mapping[str, Tensor] | nn.Module, device: str | torch.device | None = None
) -> State:
    """A detached deep copy of a module's ``state_dict`` (or of a state), optionally moved."""
    source = state.state_dict() if isinstance(state, nn.Module) else state
    return {
        name: (t.detach().to(device) if device is not None else t.detach()).clone()
        for name, t in source.items()
    }
