"""What the tracking store accepts: keys, values, names, ids, page tokens; MLflow's limits.

Every check raises :class:`InvalidInputError` naming the field, what it expected and what it
received, before anything is written, so a refused batch leaves nothing behind.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any

from mlharbor.core.errors import InvalidInputError, describe_value

MAX_KEY_CHARS = 250
MAX_PARAM_VALUE_CHARS = 6000
MAX_TAG_VALUE_CHARS = 8000
MAX_NAME_CHARS = 255
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS = 100
MAX_BATCH_TAGS = 100
MAX_RESULTS = 50_000
MAX_HISTORY = 250_000
_KEY_RE = re.compile(r"[\w\-. /:]+")
_RUN_ID_RE = re.compile(r"[0-9a-f]{32}")
_INT64 = 2**63


def check_key(key: Any, *, field: str) -> str:
    """A metric, param or tag key: MLflow's characters, no '..' path part, at most 250.

    A training loop sends the same few keys thousands of times: the keys that passed are
    remembered (up to :data:`_KNOWN_KEYS_MAX`, then forgotten all at once), so checking one
    again is a set lookup instead of a regular expression and a split."""
    if type(key) is str and key in _KNOWN_KEYS:
        return key
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS \
            or not _KEY_RE.fullmatch(key) or ".." in key.split("/") or key.startswith("/"):
        raise InvalidInputError(
            f"{field} {describe_value(key)} is not a valid key: use 1 to {MAX_KEY_CHARS} "
            "letters, digits, '_', '-', '.', ' ', ':' or '/' (no '..' part, no leading '/').",
            field=field, received=describe_value(key))
    if type(key) is str:  # a subclass of str could compare equal to a key it is not
        if len(_KNOWN_KEYS) >= _KNOWN_KEYS_MAX:
            _KNOWN_KEYS.clear()
        _KNOWN_KEYS.add(key)
    return key


_KNOWN_KEYS: set[str] = set()
_KNOWN_KEYS_MAX = 4096


def check_text(value: Any, *, field: str, limit: int, allow_empty: bool = True) -> str:
    if not isinstance(value, str) or len(value) > limit or (not allow_empty and not value) \
            or any(ord(ch) < 32 and ch not in "\t\n\r" for ch in value) \
            or not _encodable(value):
        raise InvalidInputError(
            f"{field} must be text of {'1' if not allow_empty else '0'} to {limit} characters "
            f"without control characters; received {describe_value(value)}.",
            field=field, received=describe_value(value))
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_name(value: Any, *, field: str) -> str:
    return check_text(value, field=field, limit=MAX_NAME_CHARS, allow_empty=False).strip() \
        or _blank(field)


def _blank(field: str) -> str:
    raise InvalidInputError(f"{field} must not be blank.", field=field)


def check_number(value: Any, *, field: str) -> float:
    """A metric value: a number (NaN and infinities allowed, as MLflow allows them)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf",
                                                                 "infinity", "-infinity"):
            return float(value)
        raise InvalidInputError(f"{field} must be a number; received {describe_value(value)}.",
                                field=field, received=describe_value(value))
    result = float(value)
    if isinstance(value, int) and not math.isfinite(result):
        raise InvalidInputError(f"{field} is too large a number.", field=field)
    return result


def check_int(value: Any, *, field: str, minimum: int = -_INT64, default: int | None = None
              ) -> int:
    """A whole number in 64 bits (text digits accepted, as MLflow's JSON sends int64s)."""
    if value is None and default is not None:
        return default
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,19}", value.strip()):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) \
            or not minimum <= value < _INT64:
        raise InvalidInputError(
            f"{field} must be a whole number from {minimum} to {_INT64 - 1}; received "
            f"{describe_value(value)}.", field=field, received=describe_value(value))
    return value


def check_run_id(value: Any, *, field: str = "run_id") -> str:
    if not isinstance(value, str) or not _RUN_ID_RE.fullmatch(value):
        raise InvalidInputError(
            f"{field} must be a run id (32 lowercase hex characters); received "
            f"{describe_value(value)}.", field=field, received=describe_value(value))
    return value


def check_experiment_id(value: Any, *, field: str = "experiment_id") -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise InvalidInputError(
            f"{field} must be an experiment id (a whole number as text, such as '0'); "
            f"received {describe_value(value)}.", field=field, received=describe_value(value))
    return value


def check_max_results(value: Any, *, default: int, limit: int = MAX_RESULTS) -> int:
    return min(check_int(value, field="max_results", minimum=1, default=default), limit) \
        if value is not None else default


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o{offset}".encode()).decode().rstrip("=")


def decode_token(token: Any) -> int:
    """The offset a page token stands for; 0 for none."""
    if token is None or token == "":
        return 0
    try:
        text = base64.urlsafe_b64decode(str(token) + "=" * (-len(str(token)) % 4)).decode()
        if text[:1] == "o" and text[1:].isdigit() and len(text) < 12:
            return int(text[1:])
    except (ValueError, UnicodeDecodeError):
        pass
    raise InvalidInputError(f"page_token {describe_value(token)} is not a token this server "
                            "gave out.", hint="Pass the next_page_token of the previous page.",
                            field="page_token")
