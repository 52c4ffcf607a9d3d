"""Stop-string matcher against a brute-force reference, for every way of chunking the stream."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tpuserve.serving.text.stop_strings import InvalidStopStringError, StopStringMatcher

ALPHABET = "ab c"


def reference(text: str, stops: list[str], include: bool) -> tuple[str, str | None]:
    """Scan end positions one character at a time; the first end where a stop string closes wins."""
    for end in range(1, len(text) + 1):
        closing = [stop for stop in stops if text[:end].endswith(stop)]
        if closing:
            stop = max(closing, key=len)
            return text[: end if include else end - len(stop)], stop
    return text, None


def run_chunked(text: str, cuts: list[int], stops: list[str], include: bool) -> tuple[list[str], str | None]:
    matcher = StopStringMatcher(stops, include)
    bounds = [0, *sorted(set(cuts)), len(text)]
    released = [matcher.feed(text[a:b]).released for a, b in itertools.pairwise(bounds)]
    if not matcher.stopped:
        released.append(matcher.flush())
    return released, matcher.stop_str


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(ALPHABET, max_size=24),
    stops=st.lists(st.text(ALPHABET, min_size=1, max_size=4), max_size=3),
    include=st.booleans(),
    data=st.data(),
)
def test_any_chunking_matches_the_reference(
    text: str, stops: list[str], include: bool, data: st.DataObject
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=8))
    released, stop_str = run_chunked(text, cuts, stops, include)
    assert ("".join(released), stop_str) == reference(text, stops, include)


@settings(max_examples=100, deadline=None)
@given(text=st.text(ALPHABET, max_size=24), stop=st.text(ALPHABET, min_size=2, max_size=4))
def test_hold_back_is_exactly_the_possible_stop_start(text: str, stop: str) -> None:
    """No emitted character may start a still-possible match, and nothing else is withheld."""
    matcher = StopStringMatcher([stop])
    emitted = ""
    for end in range(1, len(text) + 1):
        emitted += matcher.feed(text[end - 1]).released
        if matcher.stopped:
            break
        seen = text[:end]
        assert not any(stop.startswith(seen[i:]) for i in range(len(emitted)))
        assert stop.startswith(seen[len(emitted) :])


def test_hold_back_is_released_once_disambiguated() -> None:
    matcher = StopStringMatcher(["</s>"])
    assert matcher.feed("x <").released == "x "
    assert matcher.feed("/").released == ""
    assert matcher.feed("b>").released == "</b>"
    assert matcher.feed("</").released == ""
    assert matcher.flush() == "</"


def test_nothing_after_a_stop_and_empty_stop_rejected() -> None:
    matcher = StopStringMatcher(["END", "ST"], include_stop_str_in_output=True)
    assert (matcher.feed("fiSTEND").released, matcher.stop_str) == ("fiST", "ST")
    assert matcher.feed("more").released == ""
    with pytest.raises(InvalidStopStringError):
        StopStringMatcher(["ok", ""])


def test_a_single_string_is_one_stop_string() -> None:
    matcher = StopStringMatcher("cd")
    assert (matcher.feed("abcde").released, matcher.stop_str) == ("ab", "cd")
