"""The "did you mean" hint every configuration error about an unknown name ends with."""

from __future__ import annotations

from collections.abc import Iterable


def did_you_mean(word: str, known: Iterable[str], *, listing: str = "known") -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, else ``; <listing>: a, b, c`` (all of them, in the
    order given): the end of a message such as ``unknown option 'tiemout_s'``."""
    import difflib  # only a configuration error needs it

    names = list(known)
    close = difflib.get_close_matches(word, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; {listing}: {', '.join(names)}"
