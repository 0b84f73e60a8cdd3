"""Evaluation of the Ki-67 model: metrics with confidence intervals, baselines, plots, reports."""
