"""A home for closed-loop wiring tests: churn:1 (@champion) trained by the conftest recipe on
800 rows of the demo data, an endpoint ``churn`` serving ``churn@champion``, and policies whose
rollout needs no traffic (one canary step of 100 % held 1 s, no accuracy guard), so a retrain
job runs to a deterministic decision: the challenger, trained on the champion's own data with
the same seed, passes validation and is promoted."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mlharbor.settings import Settings

ENDPOINT = "churn"

#: Promotes: champion data only, lenient champion gate, a 1 s canary at 100 %.
FAST_POLICY = """\
endpoint: churn
model: churn
data: {champion_data: true, production_window: null, min_rows: 100}
recipe:
  overrides:
    validation: {bootstrap: 50}
    gates: ["f1 >= 0.4", "better than baseline", "not worse than champion by more than 0.05"]
rollout:
  canary: {steps: [100], hold: {requests: 0, duration: HOLD}}
  guards: {accuracy_source: none}
"""


def fast_policy(hold: str = "1s", *, approval: bool = False) -> str:
    text = FAST_POLICY.replace("HOLD", hold)
    if approval:
        text = text.replace("rollout:\n", "rollout:\n  approval: true\n")
    return text


def build_champion_home(root: Path) -> Path:
    """Train churn:1 under ``root/home`` and create the ``churn`` endpoint; the home."""
    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.endpoints import EndpointService
    from tests.pipelines.test_retrain import train_champion

    settings = Settings(home=root / "home", training={"n_jobs": 1})
    train_champion(root / "data", settings)
    registry = open_registry(settings)
    try:
        EndpointService(registry).create(
            {"name": ENDPOINT, "routes": [{"ref": "churn@champion"}]}, actor="setup")
    finally:
        registry.close()
    return root / "home"


def copy_home(base: Path, target: Path) -> Path:
    shutil.copytree(base, target)
    return target


def apply_policy(registry: Any, text: str, *, actor: str = "setup") -> int:
    """Apply a policy YAML; its stored revision."""
    from mlharbor.pipelines.policy import policy_from_yaml
    from mlharbor.registry.policies import PolicyService

    result = PolicyService(registry).apply(policy_from_yaml(text), actor=actor)
    return int(result.policy.revision)
