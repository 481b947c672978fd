"""The reproduction study: ``make study`` / ``sparseavg study`` runs every method of two
settings over five seeds, analyses them and writes docs/RESULTS.md (see :mod:`.plan`)."""

from .plan import EXPERIMENTS, PAIRED_TESTS, SETTINGS, STUDY_SEEDS, Group, Setting

__all__ = ["EXPERIMENTS", "PAIRED_TESTS", "SETTINGS", "STUDY_SEEDS", "Group", "Setting"]
