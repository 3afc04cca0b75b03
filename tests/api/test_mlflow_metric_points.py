"""A metric point of an MLflow request (``runs/log-metric``, ``runs/log-batch``): the shape
the MLflow client sends is taken as it is, and every other input is checked and converted the
same way whether or not it looks like that shape."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mlharbor.api.routes.mlflow_tracking import _point
from mlharbor.core.errors import InvalidInputError
from mlharbor.core.runs import MetricPoint
from mlharbor.tracking import checks

INT64 = 2**63
edges = st.sampled_from([0, 1, -1, INT64 - 1, INT64, -INT64, -INT64 - 1, 2**64])
whole = st.one_of(st.integers(), edges)
anything = st.one_of(st.none(), st.booleans(), whole, st.floats(allow_nan=True),
                     st.text(max_size=6), st.sampled_from(["NaN", "12", "-3", "1e3"]))


def checked(item: dict[str, Any], now: int = 7) -> MetricPoint | None:
    """What the point is by the checks alone (None: refused); ``now``: a missing timestamp."""
    try:
        return MetricPoint(
            item["key"], checks.check_number(item["value"], field="value"),
            checks.check_int(item.get("timestamp"), field="timestamp", minimum=0, default=now),
            checks.check_int(item.get("step"), field="step", default=0))
    except InvalidInputError:
        return None


def same(a: MetricPoint, b: MetricPoint) -> bool:
    return (a.key, a.timestamp, a.step) == (b.key, b.timestamp, b.step) and (
        a.value == b.value or (math.isnan(a.value) and math.isnan(b.value)))


@settings(derandomize=True, deadline=None, max_examples=400)
@given(st.floats(allow_nan=False), whole, whole, st.one_of(anything, st.floats()))
def test_the_clients_shape_and_every_other_agree_with_the_checks(
        value: float, timestamp: int, step: int, other: Any) -> None:
    for item in ({"key": "loss", "value": value, "timestamp": timestamp, "step": step},
                 {"key": "loss", "value": other, "timestamp": timestamp, "step": step},
                 {"key": "loss", "value": value, "timestamp": other, "step": other}):
        try:
            got = _point(item, "metric")
        except InvalidInputError:
            assert checked(item) is None, item
            continue
        expected = checked(item, now=got.timestamp)
        assert expected is not None and same(got, expected), (item, got, expected)
        assert type(got.value) is float and type(got.timestamp) is int \
            and type(got.step) is int
