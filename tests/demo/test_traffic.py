"""The demo's traffic: rows drift gradually, labels follow their predictions after a delay."""

from __future__ import annotations

from typing import Any

import pandas as pd

from mlharbor.demo.job import dataset_path
from mlharbor.demo.traffic import DemoTraffic


def _traffic(record: Any = None, **kwargs: Any) -> DemoTraffic:
    return DemoTraffic("http://127.0.0.1:1", "churn", "mlh_x", pd.read_csv(dataset_path()),
                       record=record or (lambda endpoint, labels: len(labels)), **kwargs)


def test_rows_drift_toward_dearer_month_to_month_contracts() -> None:
    traffic = _traffic()
    before = pd.DataFrame([traffic.sample(0.0)[0] for _ in range(600)])
    after = pd.DataFrame([traffic.sample(1.0)[0] for _ in range(600)])
    assert set(before.columns) == set(after.columns)
    assert "churn" not in before.columns and "customer_id" not in before.columns
    assert after["monthly_charges"].mean() > before["monthly_charges"].mean() + 15
    share = (after["contract"] == "month-to-month").mean()
    assert share > (before["contract"] == "month-to-month").mean() + 0.15
    _, label = traffic.sample(0.5)
    assert label in (0, 1) and isinstance(label, int)


def test_drift_ramps_over_the_configured_time() -> None:
    traffic = _traffic(ramp_s=100)
    traffic._started_at = 1000.0
    assert traffic.progress(1000.0) == 0.0
    assert traffic.progress(1050.0) == 0.5
    assert traffic.progress(5000.0) == 1.0


def test_labels_are_recorded_once_due() -> None:
    recorded: list[tuple[str, list[dict[str, Any]]]] = []
    traffic = _traffic(lambda endpoint, labels: recorded.append((endpoint, labels)),
                       feedback_delay_s=5)
    traffic._pending.extend([(0.0, "a", 1), (0.0, "b", 0), (float("inf"), "c", 1)])
    traffic._flush_feedback()
    assert recorded == [("churn", [{"request_id": "a", "label": 1},
                                   {"request_id": "b", "label": 0}])]
    assert traffic.labelled == 2 and len(traffic._pending) == 1
