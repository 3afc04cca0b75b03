from __future__ import annotations

import pytest

from mlharbor.core.errors import InvalidInputError, InvalidNameError
from mlharbor.core.names import validate_alias, validate_name
from mlharbor.core.refs import ModelRef

BAD_NAMES = [
    "../x", "a/../../b", "%2e%2e%2f", "..\\x", "a\x00b", "a/b", "a\\b", " churn", "churn ",
    "", "x" * 256, "..", ".hidden", "-dash", "a..b", "name with space", "ümlaut", "a:b", "a@b",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_with_a_reason(name: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        validate_name(name)
    message = str(info.value)
    assert "model name" in message
    assert "Traceback" not in message


@pytest.mark.parametrize("name", ["churn", "Churn-2", "fraud_v1.2", "a", "x" * 255])
def test_good_names_pass(name: str) -> None:
    assert validate_name(name) == name


def test_name_errors_say_what_is_wrong() -> None:
    with pytest.raises(InvalidNameError, match="leading or trailing spaces"):
        validate_name(" churn")
    with pytest.raises(InvalidNameError, match="256 characters long; at most 255"):
        validate_name("x" * 256)
    with pytest.raises(InvalidNameError, match="empty"):
        validate_name("")


@pytest.mark.parametrize("alias", ["latest", "3", "1abc", "a.b", "../x", ""])
def test_bad_aliases(alias: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_alias(alias)


@pytest.mark.parametrize(
    ("text", "kind", "version", "alias"),
    [
        ("churn", "latest", None, None),
        ("churn:latest", "latest", None, None),
        ("churn:3", "version", 3, None),
        ("churn@champion", "alias", None, "champion"),
    ],
)
def test_references_parse(text: str, kind: str, version: int | None, alias: str | None) -> None:
    ref = ModelRef.parse(text)
    assert (ref.name, ref.kind, ref.version, ref.alias) == ("churn", kind, version, alias)


@pytest.mark.parametrize("text", ["churn:0", "churn:-1", "churn:x", "churn:", "churn@",
                                  "../x:1", "churn@../x", "churn:1.5", "churn:٣"])
def test_bad_references(text: str) -> None:
    with pytest.raises(InvalidInputError):
        ModelRef.parse(text)
