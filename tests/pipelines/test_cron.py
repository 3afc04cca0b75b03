"""Five-field cron: parsing, errors that say what was expected, and "next run after t" checked
against a minute-by-minute brute force."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlharbor.core.errors import InvalidInputError
from mlharbor.pipelines.cron import parse_cron


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("expression", "after", "expected"), [
    ("0 3 * * 1", "2026-12-06T04:50", "2026-12-07T03:00"),        # Sunday -> Monday 03:00
    ("0 3 * * mon", "2026-12-07T03:00", "2026-12-14T03:00"),      # strictly after
    ("*/15 * * * *", "2026-01-01T00:14:59", "2026-01-01T00:15"),
    ("5-10/2 * * * *", "2026-01-01T00:07", "2026-01-01T00:09"),
    ("0 0 29 feb *", "2026-03-01T00:00", "2028-02-29T00:00"),     # next leap day
    ("0 12 1 * fri", "2026-05-02T00:00", "2026-05-08T12:00"),     # day-of-month OR weekday
    ("30 23 31 dec 7", "2026-12-31T23:30", "2027-12-05T23:30"),   # 7 is Sunday
    ("0 0 1 jan,jul *", "2026-01-01T00:00", "2026-07-01T00:00"),
    ("10/20 * * * *", "2026-01-01T00:31", "2026-01-01T00:50"),
])
def test_next_run(expression: str, after: str, expected: str) -> None:
    schedule = parse_cron(expression)
    assert schedule.next_after(at(after)) == at(expected)
    assert schedule.matches(at(expected))


def test_next_run_reads_other_time_zones_as_utc() -> None:
    from zoneinfo import ZoneInfo

    local = datetime(2026, 1, 1, 4, 30, tzinfo=ZoneInfo("Europe/Berlin"))  # 03:30 UTC
    assert parse_cron("0 4 * * *").next_after(local) == at("2026-01-01T04:00")
    with pytest.raises(InvalidInputError, match="aware"):
        parse_cron("* * * * *").next_after(datetime(2026, 1, 1))


@pytest.mark.parametrize(("expression", "message"), [
    ("0 3 * *", "has 4 fields; expected 5"),
    ("60 * * * *", "the minute value 60 is outside 0-59"),
    ("* * 0 * *", "the day of month value 0 is outside 1-31"),
    ("* * * * sunday", "'sunday' is not a day of week value"),
    ("* * * * 1-", "'' is not a day of week value"),
    ("10-5 * * * *", "the minute range '10-5' runs backwards"),
    ("*/0 * * * *", "the minute step 0 is outside"),
    ("1,,2 * * * *", "'' is not a minute value"),
    ("0 0 31 feb *", "never runs"),
    ("0 0 30 2 *", "never runs"),
    ("٣ * * * *", "is not a minute value"),
])
def test_bad_expressions_say_what_was_expected(expression: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as info:
        parse_cron(expression)
    assert info.value.details["field"] == "schedule"


def _field(low: int, high: int, names: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    value = st.integers(low, high)
    single = value.map(str)
    if names:
        single = single | st.sampled_from(names)
    span = st.tuples(value, value).map(lambda p: f"{min(p)}-{max(p)}")
    step = st.integers(1, high - low + 1)
    item = st.one_of(
        single, span,
        st.just("*"),
        step.map(lambda s: f"*/{s}"),
        st.tuples(span, step).map(lambda p: f"{p[0]}/{p[1]}"),
        st.tuples(value, step).map(lambda p: f"{p[0]}/{p[1]}"),
    )
    return st.lists(item, min_size=1, max_size=3).map(",".join)


_EXPRESSIONS = st.tuples(
    _field(0, 59), _field(0, 23), _field(1, 31),
    _field(1, 12, ("jan", "jun", "dec")), _field(0, 7, ("sun", "wed", "sat")),
).map(" ".join)
_MOMENTS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2060, 12, 31),
                        timezones=st.just(UTC))


def _brute_force(schedule: object, start: datetime, stop: datetime) -> datetime | None:
    """The first matching minute after ``start`` and before ``stop``, minute by minute."""
    minute = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while minute < stop:
        if schedule.matches(minute):  # type: ignore[attr-defined]
            return minute
        minute += timedelta(minutes=1)
    return None


@settings(derandomize=True, deadline=None, max_examples=150)
@given(expression=_EXPRESSIONS, moment=_MOMENTS)
def test_next_run_is_after_t_matches_and_skips_no_matching_minute(
    expression: str, moment: datetime,
) -> None:
    try:
        schedule = parse_cron(expression)
    except InvalidInputError as exc:
        assert "never runs" in exc.message  # only day 30/31 in too-short months
        return
    nxt = schedule.next_after(moment)
    assert nxt > moment and nxt.second == 0 and nxt.microsecond == 0
    assert schedule.matches(nxt)
    # No matching minute between t and it: brute force over a bounded span (three days; when
    # the answer is further away, the span must hold no match at all).
    stop = min(nxt, moment + timedelta(days=3))
    found = _brute_force(schedule, moment, stop + timedelta(minutes=1))
    assert found == (nxt if nxt <= stop else None)


@settings(derandomize=True, deadline=None, max_examples=60)
@given(expression=_EXPRESSIONS, moment=_MOMENTS)
def test_matches_agrees_with_the_field_sets(expression: str, moment: datetime) -> None:
    """``matches`` is the five field sets with Vixie's day rule, read independently here."""
    try:
        schedule = parse_cron(expression)
    except InvalidInputError:
        return
    fields = expression.split()
    day = moment.day in schedule.days
    weekday = moment.isoweekday() % 7 in schedule.weekdays
    restricted = not fields[2].startswith("*") and not fields[4].startswith("*")
    expected = (moment.minute in schedule.minutes and moment.hour in schedule.hours
                and moment.month in schedule.months
                and ((day or weekday) if restricted else (day and weekday)))
    assert schedule.matches(moment) == expected


def test_the_end_of_the_calendar_is_an_error_not_a_crash() -> None:
    with pytest.raises(InvalidInputError, match="fits in the calendar"):
        parse_cron("0 0 1 1 *").next_after(at("9999-06-01T00:00"))
