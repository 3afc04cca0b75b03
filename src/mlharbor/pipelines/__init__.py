"""Pipelines: jobs that span stages.

:mod:`mlharbor.pipelines.train_job` trains from a recipe, evaluates, judges the gates and
registers the winner (``train``), re-runs a stored version (``reproduce``) and scores a version
on new data (``evaluate``). It is the Python twin of ``mlharbor train / reproduce / evaluate``.
"""
