"""Experiment tracking: experiments, runs, params, metric series and run artifacts."""
