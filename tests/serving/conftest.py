"""Serving fixtures: two real RandomForest versions registered once, copied per test home.

``base_home`` registers ``churn`` v1 and v2 (``@champion`` -> 1) through the formats layer
(skops + ONNX with parity check) and a v3 whose stored blob is corrupted, so loading it fails
the digest check: a version that raises on load. ``home_settings`` copies that home so each
test may move aliases and create endpoints freely.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlharbor.settings import ServingSettings, Settings
from tests.support import LiveServer

FEATURES = [f"f{i}" for i in range(20)]


@pytest.fixture(scope="session")
def data() -> tuple[Any, Any]:
    import pandas as pd

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(400, 20)), columns=FEATURES)
    y = ((x.f0 + x.f1 - x.f2) > 0).astype(int)
    return x, y


@pytest.fixture(scope="session")
def base_home(tmp_path_factory: pytest.TempPathFactory, data: tuple[Any, Any]) -> Path:
    from sklearn.ensemble import RandomForestClassifier

    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.bundles import register_model

    x, y = data
    home = tmp_path_factory.mktemp("serving") / "home"
    settings = Settings(home=home)
    registry = open_registry(settings)
    for seed, trees in ((1, 20), (2, 10), (3, 5)):
        model = RandomForestClassifier(n_estimators=trees, max_depth=6, random_state=seed)
        register_model(registry, "churn", model.fit(x, y), settings=settings,
                       sample_input=x.head(20))
    registry.set_alias("churn", "champion", 1)
    broken = registry.get_version("churn:3")
    onnx = next(f for f in broken.files if f.path.endswith(".onnx"))
    blob = Path(settings.artifact_uri_value) / "sha256" / onnx.sha256[:2] / onnx.sha256
    blob.write_bytes(b"not the model that was registered")
    registry.close()
    return home


@pytest.fixture
def home_settings(base_home: Path, tmp_path: Path) -> Settings:
    home = tmp_path / "home"
    shutil.copytree(base_home, home)
    return Settings(home=home, serving=ServingSettings(poll_interval_s=0.2))


@pytest.fixture
def registry(home_settings: Settings) -> Iterator[Any]:
    from mlharbor.bootstrap import open_registry

    reg = open_registry(home_settings)
    yield reg
    reg.close()


@pytest.fixture
def serve(home_settings: Settings, registry: Any) -> Iterator[Callable[..., LiveServer]]:
    """Factory: ``serve(ref="churn@champion", **create_serving_app kwargs)`` -> live server.

    Auth is off unless ``auth=True`` (tests of the security wiring ask for it).
    """
    from mlharbor.serving.app import create_serving_app

    started: list[LiveServer] = []

    def start(settings: Settings | None = None, **kwargs: Any) -> LiveServer:
        kwargs.setdefault("auth", False)
        app = create_serving_app(settings or home_settings, registry, **kwargs)
        server = LiveServer(app).__enter__()
        server.app = app  # type: ignore[attr-defined]
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


@pytest.fixture
def reference_proba(home_settings: Settings, registry: Any) -> Callable[[str, Any], Any]:
    """Probabilities from the Python API (``load_predictor``) for a reference and rows."""
    from mlharbor.registry.bundles import load_predictor

    cache: dict[str, Any] = {}

    def proba(ref: str, rows: Any) -> Any:
        if ref not in cache:
            cache[ref] = load_predictor(registry, ref, home_settings)
        return cache[ref].predict_proba(rows)

    return proba
