"""Timestamps become seconds since the epoch whatever resolution pandas parses them into (ISO
dates parse to microseconds under pandas 3, nanosecond strings to nanoseconds): the profile's
date features and the drift windows' values are real unix seconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from mlharbor.data.profile import build_profile, unix_seconds

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(moment=st.datetimes(min_value=datetime(1700, 1, 1), max_value=datetime(2200, 1, 1)),
       text=st.sampled_from(["date", "seconds", "micros", "nanos"]), utc=st.booleans())
def test_unix_seconds_of_any_parsed_resolution(moment: datetime, text: str, utc: bool) -> None:
    shown = {"date": moment.strftime("%Y-%m-%d"), "seconds": moment.strftime("%Y-%m-%dT%H:%M:%S"),
             "micros": moment.strftime("%Y-%m-%dT%H:%M:%S.%f"),
             "nanos": moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "001"}[text]
    stamps = pd.to_datetime(pd.Series([shown, None]), errors="coerce", format="mixed", utc=utc)
    seconds = unix_seconds(stamps)
    expected = (pd.Timestamp(shown).tz_localize("UTC").to_pydatetime(warn=False)
                - EPOCH).total_seconds()
    assert abs(seconds.iloc[0] - expected) < 1e-5
    assert pd.isna(seconds.iloc[1])


def test_a_date_feature_is_profiled_in_unix_seconds() -> None:
    days = [datetime(2024, 1, 1) + timedelta(days=i) for i in range(100)]
    frame = pd.DataFrame({"when": [d.strftime("%Y-%m-%d") for d in days],
                          "x": range(100)})
    entry = build_profile(frame, {"when": "datetime", "x": "numeric"})["features"]["when"]
    assert entry["kind"] == "datetime" and entry["unit"] == "unix_seconds"
    first = (datetime(2024, 1, 1, tzinfo=UTC) - EPOCH).total_seconds()
    assert first <= entry["mean"] <= first + 100 * 86_400
