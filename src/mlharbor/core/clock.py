"""The one place that reads the wall clock, so tests can reason about time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    """Timezone-aware current time in UTC."""
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_micros(moment: datetime) -> int:
    """``moment`` as integer microseconds since the Unix epoch: how the prediction log and
    the label store keep times. Exact: timedelta arithmetic, never a float timestamp (which
    is 1 us off for some moments). A naive ``moment`` is taken as local time, as
    ``datetime.timestamp()`` takes it."""
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return (moment - _EPOCH) // _MICROSECOND
