"""Five-field cron expressions (``"0 3 * * 1"``) and the next run after a moment, in UTC.

Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or ``jan``..``dec``),
day of week (0-7 or ``sun``..``sat``; 0 and 7 are Sunday). Each field is ``*``, a value, a range
``a-b``, a step ``*/n`` or ``a-b/n`` or ``a/n`` (from ``a`` to the field's end), or a list of
those separated by commas. As in Vixie cron, when both day of month and day of week are
restricted (neither starts with ``*``) a day matches if EITHER matches.

Cheap to import (standard library only); policies validate their ``schedule`` with
:func:`parse_cron`, the job scheduler asks :meth:`CronSchedule.next_after`.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from mlharbor.core.errors import InvalidInputError

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
#: (name, low, high, names) of the five fields, in order.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {name: i + 1 for i, name in enumerate(_MONTHS)}),
    ("day of week", 0, 7, {name: i for i, name in enumerate(_DAYS)}),
)
_FORM = ("Write five fields: minute hour day-of-month month day-of-week, each '*', a value, "
         "a range 'a-b', a step '*/n' or 'a-b/n', or a comma list (e.g. '0 3 * * mon').")
#: How far ahead :meth:`CronSchedule.next_after` looks (28 years covers every weekday/leap
#: combination), so an expression that never matches ('0 0 30 2 *') is an error, not a hang.
_HORIZON_YEARS = 28


@dataclasses.dataclass(frozen=True)
class CronSchedule:
    """A parsed expression: the allowed values of each field (day of week 0-6, Sunday = 0)."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_restricted: bool
    weekday_restricted: bool

    def matches(self, moment: datetime) -> bool:
        """Whether the minute holding ``moment`` (read in UTC) is one the expression names."""
        at = _utc(moment)
        return (at.minute in self.minutes and at.hour in self.hours
                and at.month in self.months and self._day_matches(at))

    def next_after(self, moment: datetime) -> datetime:
        """The first matching minute strictly after ``moment`` (UTC, seconds zero).

        InvalidInputError when the expression names no real day (``0 0 31 2 *``).
        """
        start = _utc(moment)
        try:
            found = self._search(start.replace(second=0, microsecond=0) + timedelta(minutes=1))
        except (OverflowError, ValueError) as exc:  # past year 9999
            raise InvalidInputError(f"No run of {self.expression!r} after {moment.isoformat()} "
                                    "fits in the calendar.", field="at") from exc
        if found is not None:
            return found
        raise InvalidInputError(f"The schedule {self.expression!r} never runs.",
                                hint="Check the day of month against the month.",
                                field="schedule")

    def _search(self, at: datetime) -> datetime | None:
        """The first matching minute from ``at`` on, skipping whole months, days and hours."""
        limit = at.year + _HORIZON_YEARS
        while at.year <= limit:
            if at.month not in self.months:
                at = _first_of_next_month(at)
            elif not self._day_matches(at):
                at = (at + timedelta(days=1)).replace(hour=0, minute=0)
            elif at.hour not in self.hours:
                at = (at + timedelta(hours=1)).replace(minute=0)
            elif at.minute not in self.minutes:
                at += timedelta(minutes=1)
            else:
                return at
        return None

    def _day_matches(self, at: datetime) -> bool:
        in_month = at.day in self.days
        in_week = (at.isoweekday() % 7) in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return in_month or in_week
        return in_month and in_week


def parse_cron(expression: str) -> CronSchedule:
    """Parse a five-field expression; InvalidInputError names the field and what it expected."""
    if not isinstance(expression, str):
        raise InvalidInputError(f"A schedule must be text; received {type(expression).__name__}.",
                                hint=_FORM, field="schedule")
    parts = expression.split()
    if len(parts) != 5:
        raise InvalidInputError(
            f"The schedule {expression!r} has {len(parts)} fields; expected 5.", hint=_FORM,
            field="schedule")
    values = [_field(part, *spec, expression=expression) for part, spec in zip(parts, _FIELDS,
                                                                                 strict=True)]
    weekdays = frozenset(d % 7 for d in values[4])
    schedule = CronSchedule(
        expression=" ".join(parts), minutes=values[0], hours=values[1], days=values[2],
        months=values[3], weekdays=weekdays, day_restricted=not parts[2].startswith("*"),
        weekday_restricted=not parts[4].startswith("*"))
    schedule.next_after(datetime(2000, 1, 1, tzinfo=UTC))  # reject what never runs, now
    return schedule


def _field(text: str, name: str, low: int, high: int, names: dict[str, int], *,
           expression: str) -> frozenset[int]:
    out: set[int] = set()
    for item in text.lower().split(","):
        base, _, step_text = item.partition("/")
        step = 1
        if step_text or item.endswith("/"):
            step = _number(step_text, name, 1, high - low + 1, {}, expression, what="step")
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start = _number(a, name, low, high, names, expression)
            end = _number(b, name, low, high, names, expression)
            if end < start:
                raise InvalidInputError(
                    f"The schedule {expression!r}: the {name} range {base!r} runs backwards.",
                    hint=f"Write the smaller value first ({name} is {low}-{high}).",
                    field="schedule")
        else:
            start = _number(base, name, low, high, names, expression)
            end = high if step_text else start
        out.update(range(start, end + 1, step))
    return frozenset(out)


def _number(text: str, name: str, low: int, high: int, names: dict[str, int], expression: str,
            *, what: str = "value") -> int:
    if text in names:
        return names[text]
    if not text.isascii() or not text.isdigit():
        raise InvalidInputError(
            f"The schedule {expression!r}: {text!r} is not a {name} {what}.",
            hint=f"The {name} field takes {low}-{high}"
                 + (f" or a name ({', '.join(names)})" if names else "") + ". " + _FORM,
            field="schedule")
    value = int(text)
    if not low <= value <= high:
        raise InvalidInputError(
            f"The schedule {expression!r}: the {name} {what} {value} is outside {low}-{high}.",
            hint=_FORM, field="schedule")
    return value


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise InvalidInputError("A schedule needs an aware datetime (UTC).", field="at")
    return moment.astimezone(UTC)


def _first_of_next_month(at: datetime) -> datetime:
    year, month = (at.year + 1, 1) if at.month == 12 else (at.year, at.month + 1)
    return at.replace(year=year, month=month, day=1, hour=0, minute=0)
