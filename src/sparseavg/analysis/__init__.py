"""Analyses of trained (sparse, averaged) models: pure functions over models, states and
tensors; nothing here touches disk (``sparseavg analyze`` is in :mod:`sparseavg.experiment`).

- :func:`linear_path`: loss and error along the line between two models, and its barrier
- :func:`hessian_trace`: Hutchinson's estimate of the loss Hessian's trace (with a mask: on the
  surviving weights)
- :func:`distances`: L2 distance and cosine similarity of parameter vectors
- :func:`calibration`: expected calibration error (15 bins) and per-class accuracy
"""

from .calibration import Calibration, calibration
from .geometry import (
    Distance,
    cosine_similarity,
    distances,
    flatten,
    l2_distance,
    parameter_names,
)
from .hessian import TraceEstimate, hessian_trace
from .interpolation import PathResult, barrier, interpolate, linear_path, linear_paths

__all__ = [
    "Calibration",
    "Distance",
    "PathResult",
    "TraceEstimate",
    "barrier",
    "calibration",
    "cosine_similarity",
    "distances",
    "flatten",
    "hessian_trace",
    "interpolate",
    "l2_distance",
    "linear_path",
    "linear_paths",
    "parameter_names",
]
