"""The one place that reads the wall clock, so tests can reason about time."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Timezone-aware current time in UTC."""
    return datetime.now(UTC)


def epoch_micros(moment: datetime) -> int:
    """``moment`` as integer microseconds since the Unix epoch: how the prediction log and
    the label store keep times."""
    return int(moment.timestamp() * 1_000_000)
