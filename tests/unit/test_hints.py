"""The one "did you mean" hint of configuration errors (timeguard.hints)."""

from __future__ import annotations

import difflib

from hypothesis import given
from hypothesis import strategies as st

from timeguard.hints import did_you_mean

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)


@given(st.lists(names, min_size=1, max_size=8, unique=True), st.data())
def test_a_known_name_is_its_own_suggestion(known: list[str], data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(known))
    assert did_you_mean(target, known) == f" (did you mean {target!r}?)"


@given(names, st.lists(names, max_size=8, unique=True), st.sampled_from(["known", "known keys", "its options"]))
def test_the_hint_names_the_closest_or_lists_every_known_name_in_order(
    word: str, known: list[str], listing: str
) -> None:
    hint = did_you_mean(word, iter(known), listing=listing)  # any iterable, read once
    close = difflib.get_close_matches(word, known, n=1)
    if close:
        assert hint == f" (did you mean {close[0]!r}?)"
        assert close[0] in known
    else:
        assert hint == f"; {listing}: {', '.join(known)}"
