"""Pipelines: jobs that span stages.

:mod:`mlharbor.pipelines.train_job` trains from a recipe, evaluates, judges the gates and
registers the winner (``train``), re-runs a stored version (``reproduce``) and scores a version
on new data (``evaluate``). It is the Python twin of ``mlharbor train / reproduce / evaluate``.

:mod:`mlharbor.pipelines.abtest` is the A/B and canary decision rule: a fixed-horizon design
(sample size from the wanted power) and a group-sequential one (Lan-DeMets O'Brien-Fleming
alpha spending), so a rollout may look at every canary step without inflating false positives.
"""
