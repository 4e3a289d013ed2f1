"""itloop: analysis. Pure functions over numpy arrays (spike counts, provenance columns).

Estimators live in ``analysis.sensitivity``, baselines in ``analysis.baselines``, measurement
noise in ``analysis.noise``, simulation ground truth in ``analysis.groundtruth``, figures in
``analysis.plots`` (matplotlib, imported only when used) and the markdown summary in
``analysis.summary``.
"""
from analysis.baselines import SiteLevel, random_direction_control, random_pair_baseline
from analysis.bootstrap import Estimate, bootstrap_mean
from analysis.groundtruth import FractionOfTrue, fraction_of_true
from analysis.noise import expected_abs_difference_poisson, split_half_noise_floor, split_half_reliability
from analysis.sensitivity import (
                                  PredictedVsMeasured,
                                  SensitivityCurve,
                                  clean_sigma,
                                  model_unit_curve,
                                  predicted_vs_measured,
                                  sensitivity_curve,
)

__all__ = ["Estimate", "FractionOfTrue", "PredictedVsMeasured", "SensitivityCurve", "SiteLevel", "bootstrap_mean",
           "clean_sigma", "expected_abs_difference_poisson", "fraction_of_true",
           "model_unit_curve", "predicted_vs_measured", "random_direction_control", "random_pair_baseline",
           "sensitivity_curve", "split_half_noise_floor", "split_half_reliability"]
