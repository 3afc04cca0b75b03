"""Bundle file paths: every string is either refused with our error or names a file strictly
inside the bundle, spelled exactly as given."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlharbor.core.errors import InvalidInputError
from mlharbor.registry.service import bundle_path

ROOT = Path("/srv/bundle/root")
# Path-ish pieces that break naive checks, plus arbitrary unicode (surrogates included).
PIECES = st.sampled_from(["", ".", "..", "/", "\\", "\x00", "\n", ":", "C:", "~", " ", "a",
                          "b.bin", "é", "日本", "\u202e", "\ud800", "x" * 256, "é" * 128])
NAMES = st.one_of(
    st.lists(st.one_of(PIECES, st.text(max_size=6)), max_size=8).map("".join),
    st.lists(st.one_of(PIECES, st.text(max_size=4)), max_size=5).map("/".join),
    st.text(max_size=40),
)


@settings(derandomize=True, deadline=None, max_examples=1500)
@given(NAMES)
def test_refused_or_strictly_inside_the_root(text: str) -> None:
    try:
        path = bundle_path(text)
    except InvalidInputError as exc:
        assert exc.details["field"] == "files"
        orjson.dumps(exc.to_dict())  # the error body can echo any name (no lone surrogates)
        return
    resolved = (ROOT / path).resolve()
    assert resolved != ROOT and resolved.is_relative_to(ROOT)
    # One spelling per file: what is accepted is what is stored, nothing normalised away.
    assert str(path) == text.replace("\\", "/")
    assert "\x00" not in str(path) and not path.is_absolute()


@pytest.mark.parametrize("text", [".", "..", "", "/", "\\", "a/./b", "./a", "a/", "a//b",
                                  "../a", "a/..", "/etc/passwd", "C:\\x", "a\x00b", "a\nb",
                                  "x" * 256, "a/" * 600])
def test_known_bad_names_are_refused(text: str) -> None:
    with pytest.raises(InvalidInputError, match="is not allowed"):
        bundle_path(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("model.bin", "model.bin"), ("meta/info.json", "meta/info.json"),
    ("dir\\file.txt", "dir/file.txt"), ("日本/é.bin", "日本/é.bin"), (".hidden", ".hidden"),
    ("a..b", "a..b"), ("é" * 127, "é" * 127),
])
def test_ordinary_names_are_kept(text: str, expected: str) -> None:
    assert str(bundle_path(text)) == expected
