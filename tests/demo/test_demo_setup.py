"""What `mlharbor demo` stores before it serves: the endpoint the loop rolls out on, the demo
policy, its quick loop settings, and what it says when an earlier run's job blocks a new one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from mlharbor.core.clock import utcnow
from mlharbor.demo.job import (
    apply_policy,
    cooldown_line,
    demo_settings,
    policy_path,
    store_endpoint,
)
from mlharbor.pipelines.jobstore import JobStore
from mlharbor.pipelines.policy import load_policy
from mlharbor.registry.endpoints import EndpointService
from mlharbor.settings import Settings


@pytest.fixture
def registry(settings: Settings) -> Iterator[Any]:
    """A registry with churn:1 as champion (a small fitted model, no training run)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.bundles import register_model

    reg = open_registry(settings)
    x = np.random.default_rng(0).normal(size=(60, 3))
    register_model(reg, "churn", LogisticRegression().fit(x, x[:, 0] > 0), settings=settings,
                   sample_input=x[:5])
    reg.set_alias("churn", "champion", 1)
    try:
        yield reg
    finally:
        reg.close()


def test_the_endpoint_is_created_kept_and_reset_to_the_champion(registry: Any) -> None:
    service = EndpointService(registry)
    assert store_endpoint(registry) == "created"
    assert [(r.ref, r.weight) for r in service.get("churn").spec.routes] == [
        ("churn@champion", 100.0)]
    assert store_endpoint(registry) == "unchanged"
    assert service.get("churn").revision == 1
    # A rollout interrupted with the demo (weights pinned mid-canary) is reset on the next run.
    service.update("churn", {"routes": [{"ref": "churn:1", "weight": 75},
                                        {"ref": "churn@champion", "weight": 25}],
                             "fallback": ["churn:1"]}, actor="test")
    assert store_endpoint(registry) == "reset"
    spec = service.get("churn").spec
    assert [(r.ref, r.weight) for r in spec.routes] == [("churn@champion", 100.0)]
    assert spec.fallback == [] and service.get("churn").revision == 3


def test_the_demo_policy_is_applied_once(registry: Any) -> None:
    store_endpoint(registry)
    first = apply_policy(registry)
    assert (first.outcome, first.policy.revision) == ("created", 1)
    assert apply_policy(registry).outcome == "unchanged"
    policy = load_policy(policy_path())
    assert policy.endpoint == "churn" and policy.triggers.drift is not None
    assert policy.data.champion_data and policy.rollout.canary.steps[-1] == 100


def test_demo_settings_quicken_the_loops_only_for_the_demo(settings: Settings) -> None:
    quick = demo_settings(settings)
    assert quick.pipelines.trigger_interval_s == 5.0 and quick.pipelines.job_poll_s == 0.5
    assert quick.serving.poll_interval_s == 1.0
    assert settings.pipelines.trigger_interval_s == 60.0  # the caller's settings unchanged
    assert quick.home == settings.home and quick.server == settings.server
    quicker = settings.model_copy(update={
        "pipelines": settings.pipelines.model_copy(update={"trigger_interval_s": 2.0})})
    assert demo_settings(quicker).pipelines.trigger_interval_s == 2.0  # never slower


def test_a_job_within_the_cooldown_is_said_with_until_when(registry: Any) -> None:
    jobs = JobStore(registry.store)
    assert cooldown_line(jobs, "http://h:1") is None
    cooldown = load_policy(policy_path()).triggers.cooldown_delta
    old, _ = jobs.submit("retrain", "churn",
                         {"at": (utcnow() - cooldown - timedelta(minutes=1)).isoformat()},
                         ["snapshot"], actor="test")
    jobs.cancel(old.id, actor="test")
    assert cooldown_line(jobs, "http://h:1") is None  # its cooldown is over
    recent, _ = jobs.submit("retrain", "churn", {"at": utcnow().isoformat()}, ["snapshot"],
                            actor="test")
    line = cooldown_line(jobs, "http://h:1")
    assert line is not None and recent.id in line and f"http://h:1/ui#/jobs/{recent.id}" in line
    assert "cooldown starts no other before" in line
