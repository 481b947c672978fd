"""Adapters to other training frameworks. Each lives in its own module and imports its
framework only when that module is imported, so ``import sparseavg`` never needs them:

- :mod:`sparseavg.integrations.lightning`: :class:`SparseTraining`, a Lightning callback
  (``pip install lightning``).
"""
