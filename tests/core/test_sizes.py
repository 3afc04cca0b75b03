"""The one size parser (core/sizes.py): every unit exactly, decimals exactly, anything else a
clear InvalidInputError (never another exception), and the serving budget setting reads it."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlharbor.core.errors import InvalidInputError
from mlharbor.core.sizes import MAX_SIZE, SIZE_UNITS, format_size, parse_size

UNITS = st.sampled_from(sorted(SIZE_UNITS))


def _spelled(unit: str, upper: Callable[[st.SearchStrategy[bool]], bool]) -> str:
    """A unit as people write it: any case, with or without the B."""
    text = unit + ("b" if upper(st.booleans()) else "")
    return "".join(c.upper() if upper(st.booleans()) else c for c in text)


@settings(derandomize=True, deadline=None, max_examples=150)
@given(st.data(), st.integers(min_value=0, max_value=10**6), UNITS,
       st.sampled_from(["", " ", "  "]))
def test_a_whole_amount_and_any_spelling_of_a_unit(data: st.DataObject, amount: int,
                                                  unit: str, space: str) -> None:
    text = f"{amount}{space}{_spelled(unit, data.draw)}"
    assert parse_size(f" {text} ") == amount * SIZE_UNITS[unit]


@settings(derandomize=True, deadline=None, max_examples=150)
@given(st.decimals(min_value=0, max_value=10**5, places=3, allow_nan=False), UNITS)
def test_a_decimal_amount_is_exact_and_rounds_down(amount: Decimal, unit: str) -> None:
    expected = int(amount * SIZE_UNITS[unit])
    assert parse_size(f"{amount:f}{unit}") == expected
    assert expected <= amount * SIZE_UNITS[unit] < expected + 1


@settings(derandomize=True, deadline=None, max_examples=300)
@given(st.text(max_size=12))
def test_any_text_is_a_size_or_a_clear_refusal(text: str) -> None:
    try:
        value = parse_size(text, what="serving.model_memory_budget")
    except InvalidInputError as exc:
        assert "serving.model_memory_budget" in str(exc) and exc.hint
        return
    assert 0 <= value <= MAX_SIZE


@settings(derandomize=True, deadline=None, max_examples=300)
@given(st.integers(min_value=0, max_value=MAX_SIZE))
def test_format_size_reads_back_within_its_precision(size: int) -> None:
    shown = format_size(size)
    back = parse_size(shown.replace(" ", ""))
    assert abs(back - size) <= max(1, size // 100)  # three figures: within 1%


@pytest.mark.parametrize("text", ["", "MB", "-1", "1e9", "1,000", "2 GiBs", "1 EiB", "nan",
                                  "0x10", "1.2.3MB", "\u0661\u0662MB",  # Arabic-Indic digits
                                  str(MAX_SIZE + 1), "1048577TiB"])
def test_refusals_name_what_was_wrong(text: str) -> None:
    with pytest.raises(InvalidInputError, match="model_memory_budget"):
        parse_size(text, what="model_memory_budget")


def test_ints_pass_and_other_types_are_refused() -> None:
    assert parse_size(123) == 123
    for bad in (True, 1.5, None):
        with pytest.raises(InvalidInputError, match="not"):
            parse_size(bad)  # type: ignore[arg-type]


def test_the_serving_budget_setting_takes_sizes() -> None:
    from mlharbor.settings import ServingSettings

    assert ServingSettings(model_memory_budget="2GiB").model_memory_budget == 2 << 30
    assert ServingSettings(model_memory_budget="500MB").model_memory_budget == 500 * 10**6
    assert ServingSettings(model_memory_budget=4096).model_memory_budget == 4096
    assert ServingSettings(model_memory_budget="0").model_memory_budget == 0
    with pytest.raises(ValueError, match="not a size"):
        ServingSettings(model_memory_budget="2 gigs")
