"""Feature attributions for tabular models: TreeSHAP, booster contributions, exact linear,
and a sampled model-agnostic fallback (the ``mlharbor[explain]`` extra brings ``shap``).

    from mlharbor.explain import explainer_for
    attributions = explainer_for(predictor, background).explain(rows)
    attributions.base_values + attributions.values.sum(axis=1)  # == the model's output

See :mod:`mlharbor.explain.explainers` for which method each model gets and
:mod:`mlharbor.explain.attributions` for output spaces and shapes. Importing this package
loads NumPy only; shap, scikit-learn and the boosters load when an explainer is built.
"""

from mlharbor.explain.attributions import Attributions
from mlharbor.explain.explainers import Explainer, explainer_for

__all__ = ["Attributions", "Explainer", "explainer_for"]
