"""Placeholder until the stacked executor lands (being written on branch ``stacked``)."""

from __future__ import annotations

from typing import Any


class Stacked:
    name = "stacked"

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the stacked executor is not built yet")
