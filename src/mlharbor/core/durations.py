"""Durations as users write them (``90s``, ``15m``, ``24h``, ``7d``, ``2w``, ``5.13m``): the
one parser every surface uses (monitoring windows and steps, key expiry, audit ranges)."""

from __future__ import annotations

from datetime import timedelta

from mlharbor.core.errors import InvalidInputError

#: Seconds per unit letter.
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The longest duration accepted: ten years (longer is a typo, and overflows date arithmetic).
MAX_DURATION_S = 10 * 366 * 86400
_UNITS = DURATION_UNITS


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``24h``, ``7d``, ``2w``, ``5.13m`` as a timedelta of whole
    microseconds (InvalidInputError when malformed, not positive, shorter than a microsecond
    or longer than ten years).

    The amount is read as a decimal, not a float, so ``40.7s`` is exactly 40,700,000 us:
    windows are cut on integer microseconds (:func:`window_bounds`), like the log's times.
    """
    from decimal import ROUND_HALF_EVEN, Decimal, DecimalException

    value = text.strip().lower()
    try:
        amount = Decimal(value[:-1])
        unit = _UNITS[value[-1]]
    except (KeyError, DecimalException, IndexError) as exc:
        raise InvalidInputError(
            f"The duration {text!r} is not understood.",
            hint="Write a number and a unit: 90s, 15m, 24h, 7d or 2w.") from exc
    if not amount.is_finite() or not amount > 0:
        raise InvalidInputError(f"The duration {text!r} must be a positive number.")
    if amount > MAX_DURATION_S or amount * unit > MAX_DURATION_S:
        raise InvalidInputError(f"The duration {text!r} is longer than ten years.",
                                hint="Ask for a shorter window.")
    micros = int((amount * unit * 1_000_000).to_integral_value(ROUND_HALF_EVEN))
    if micros < 1:
        raise InvalidInputError(f"The duration {text!r} is shorter than a microsecond.")
    return timedelta(microseconds=micros)
