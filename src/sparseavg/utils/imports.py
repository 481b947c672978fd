"""Whether an optional package imports, asked before a run depends on it."""

from __future__ import annotations

import importlib


def import_problem(module: str) -> str | None:
    """Why ``module`` does not import, in one line, or ``None`` when it does. A real import,
    not a lookup: a package that is installed but fails to import (a version clash) is
    caught too."""
    try:
        importlib.import_module(module)
    except Exception as err:  # ImportError, or whatever a broken install raises
        text = str(err).strip()
        return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
    return None
