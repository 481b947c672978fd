"""The reproduction study: ``make study`` / ``sparseavg study`` runs every method of two
settings over five seeds, analyses them and writes docs/RESULTS.md (see :mod:`.plan`)."""

from .plan import PAIRED_TESTS, SETTINGS, STUDY_SEEDS, Group, Setting

__all__ = ["PAIRED_TESTS", "SETTINGS", "STUDY_SEEDS", "Group", "Setting"]
