"""Combining models: uniform averages, greedy soups, BN recalibration, prediction ensembles."""

from .batchnorm import default_forward, has_batchnorm, recalibrate_bn, recalibrate_bn_on
from .ensemble import ensemble_probabilities, evaluate_ensemble
from .soup import ACCEPT_RULES, AcceptRule, SoupResult, greedy_soup
from .uniform import uniform_average

__all__ = [
    "ACCEPT_RULES",
    "AcceptRule",
    "SoupResult",
    "default_forward",
    "ensemble_probabilities",
    "evaluate_ensemble",
    "greedy_soup",
    "has_batchnorm",
    "recalibrate_bn",
    "recalibrate_bn_on",
    "uniform_average",
]
