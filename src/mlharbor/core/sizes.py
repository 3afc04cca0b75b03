"""Sizes in bytes as users write them (``2GiB``, ``500MB``, ``768 MiB``, ``1.5G``, ``4096``):
the one parser every surface uses (serving's model memory budget, batch scoring's memory
budget), beside :mod:`mlharbor.core.durations`.

Units, case-insensitive, with an optional ``B``: none or ``B`` (bytes), the decimal ``k``, ``M``,
``G``, ``T`` (powers of 1000, as disks and cloud consoles count) and the binary ``Ki``, ``Mi``,
``Gi``, ``Ti`` (powers of 1024, as ``free`` and Kubernetes' ``Mi``/``Gi`` count). The amount is
read as a decimal, not a float, so ``1.1GB`` is exactly 1,100,000,000 bytes; a fraction of a
byte is rounded down. Exponents (``1e9``), signs and separators are refused: a size is a
number and a unit, and anything else is more likely a typo than a size.
"""

from __future__ import annotations

import re

from mlharbor.core.errors import InvalidInputError

#: Bytes per unit (lower case, without the optional trailing ``b``).
SIZE_UNITS: dict[str, int] = {
    "": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
    "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40,
}
#: The largest size accepted: 1 EiB (more is a typo, and overflows 64-bit byte counts).
MAX_SIZE = 2**60
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?)?b?", re.IGNORECASE | re.ASCII)
_HINT = "Write bytes, or a number and a unit: 800000000, 800MB, 768MiB, 2GiB."


def parse_size(text: str | int, *, what: str = "size") -> int:
    """``"2GiB"``, ``"500MB"``, ``"4096"`` (or an int) as a whole number of bytes >= 0.

    ``what`` names the setting or option in the error (``serving.model_memory_budget``), so a
    refusal says which value was wrong. Raises :class:`InvalidInputError` when the text is not
    a size or is larger than :data:`MAX_SIZE`; zero is returned as zero (callers for which
    zero means "no limit" or "invalid" decide).
    """
    from decimal import Decimal

    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise InvalidInputError(f"{what} must be a size in bytes, not {type(text).__name__}.",
                                hint=_HINT, field=what, received=repr(text))
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.fullmatch(text.strip())
        if match is None:
            raise InvalidInputError(f"{what} {text!r} is not a size.", hint=_HINT, field=what,
                                    received=text)
        unit = SIZE_UNITS[(match.group(2) or "").lower()]
        value = int(Decimal(match.group(1)) * unit)  # int() rounds a fraction down
    if value < 0:
        raise InvalidInputError(f"{what} {text!r} must not be negative.", hint=_HINT,
                                field=what, received=text)
    if value > MAX_SIZE:
        raise InvalidInputError(f"{what} {text!r} is larger than 1 EiB.",
                                hint="Check the unit: sizes are bytes, MB or GiB.",
                                field=what, received=text)
    return value


def format_size(size: int) -> str:
    """``size`` bytes for people: ``"512 B"``, ``"20 MiB"``, ``"1.5 GiB"`` (binary units,
    three significant figures; messages give the exact byte count beside it)."""
    amount = float(size)
    unit = "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if abs(amount) < 1024:
            break
        amount, unit = amount / 1024, bigger
    if unit == "B":
        return f"{size} B"
    return f"{amount:.0f} {unit}" if amount >= 100 else f"{amount:.3g} {unit}"
