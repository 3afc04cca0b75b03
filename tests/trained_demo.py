"""One trained demo home per test session, copied for each module that reads it.

Training the demo recipe is the slow part of the model card tests (tests/pipelines/
test_modelcard.py, tests/ui/test_card_page.py). Both read the same records (the recipe's card
section, the data fingerprint, the evaluation with slices and importance) and differ only in the
alias moves they make afterwards, so the recipe is trained once per session (per xdist worker:
the modules share the ``trained-demo`` group, so ``--dist loadgroup`` runs them on one) and
each module gets its own copy of the home (``shutil.copytree``) to move aliases in.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest
import yaml

import mlharbor
from mlharbor.settings import Settings

DEMO = Path(mlharbor.__file__).parent / "demo"
#: The xdist group of the modules that read the trained demo home.
GROUP = "trained-demo"


def demo_settings(home: Path) -> Settings:
    """Settings of a demo home (the registry database and artifacts live under it)."""
    return Settings(home=home, training={"n_jobs": 1})


@functools.cache
def _base_home(root: Path) -> Path:
    """The demo recipe (one candidate, two folds, 100 bootstrap draws, to be quick) trained
    twice by ``trainer`` under ``root``: v1, then v2 promoted to champion by its gates."""
    from mlharbor.bootstrap import open_registry
    from mlharbor.pipelines.train_job import train
    from mlharbor.training.recipe import recipe_from_dict

    doc = yaml.safe_load((DEMO / "recipe.yaml").read_text())
    doc["candidates"] = doc["candidates"][:1]
    doc["validation"].update(folds=2, bootstrap=100)
    recipe = recipe_from_dict(doc, base_dir=DEMO)
    root.mkdir(parents=True, exist_ok=True)
    home = root / "home"
    settings = demo_settings(home)
    registry = open_registry(settings)
    try:
        train(recipe, registry=registry, settings=settings, actor="trainer")
        train(recipe, registry=registry, settings=settings, actor="trainer")
    finally:
        registry.close()  # closed before any copy: the database file is whole
    return home


def trained_demo_home(factory: pytest.TempPathFactory, name: str) -> Settings:
    """Settings of a fresh copy of the session's trained demo home (built on first use)."""
    base = _base_home(factory.getbasetemp() / "trained-demo")
    home = factory.mktemp(name) / "home"
    shutil.copytree(base, home)
    return demo_settings(home)
