"""Training: recipes (YAML or Python), data preparation, candidate estimators and search spaces.

Orchestration that scores candidates and registers the winner lives in
:mod:`mlharbor.pipelines.train_job`, which sits above both training and the registry.
"""
