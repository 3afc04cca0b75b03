"""Evaluation: metrics, cross-validation, baselines, champion comparison, gates and reports."""
