"""Adapters to other training frameworks. Each lives in its own module and imports its
framework only when that module is imported, so ``import sparseavg`` never needs them:

- :mod:`sparseavg.integrations.lightning`: :class:`SparseTraining`, a Lightning callback
  (``pip install lightning``).
- :mod:`sparseavg.integrations.huggingface`: :class:`MaskCallback`, a ``TrainerCallback``
  that keeps a mask through ``Trainer.train()``, and :func:`trainer_train_fn`, which runs
  ``sparseavg.swamp/sms/imp/prune`` with your ``Trainer`` (``pip install transformers
  accelerate``).
"""
