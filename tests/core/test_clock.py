"""Times are integer microseconds since the epoch, exactly, both ways."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from mlharbor.core.clock import epoch_micros
from mlharbor.monitoring.windows import moment_of

# Year 1 to 9999 in microseconds from the epoch.
SPAN = st.integers(min_value=-62_135_596_800_000_000, max_value=253_402_300_799_999_999)


@settings(derandomize=True, deadline=None, max_examples=2000)
@given(SPAN)
def test_epoch_micros_inverts_moment_of_exactly(micros: int) -> None:
    assert epoch_micros(moment_of(micros)) == micros


@settings(derandomize=True, deadline=None, max_examples=300)
@given(SPAN, st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_the_zone_of_a_moment_does_not_change_its_micros(micros: int, offset_min: int) -> None:
    moment = moment_of(micros)
    zone = timezone(timedelta(minutes=offset_min))
    try:
        shifted = moment.astimezone(zone)
    except OverflowError:  # near year 1 or 9999 the local date leaves the calendar
        return
    assert epoch_micros(shifted) == micros


def test_a_moment_the_float_timestamp_got_wrong() -> None:
    assert epoch_micros(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=3931)) == 3931
