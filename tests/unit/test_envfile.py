"""timeguard.repair.envfile: systemd EnvironmentFile= syntax, as the application's unit reads it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeguard.repair.envfile import EnvFileError, parse

TEXT = """\
# the application's settings (SPACED ends in three spaces, written as an escape)
; a comment too
DATABASE_URL=postgres://app:s3cret@db/app
  SPACED = value with spaces\x20\x20\x20
SINGLE='a $b "c" \\n'
DOUBLE="a \\"quoted\\" \\\\ \\$HOME"
EMPTY=
CONTINUED=one \\
two
MULTI="first
second"
export DJANGO_DEBUG=0
DATABASE_URL=postgres://app:later@db/app
"""


def test_systemd_syntax() -> None:
    assert parse(TEXT, "app.env") == {
        "DATABASE_URL": "postgres://app:later@db/app",  # the later assignment wins
        "SPACED": "value with spaces",
        "SINGLE": 'a $b "c" \\n',
        "DOUBLE": 'a "quoted" \\ $HOME',
        "EMPTY": "",
        "CONTINUED": "one two",
        "MULTI": "first\nsecond",
        "DJANGO_DEBUG": "0",
    }


@pytest.mark.parametrize(("text", "why"), [
    ("NOT AN ASSIGNMENT\n", "line 1: not a KEY=VALUE assignment"),
    ("OK=1\n1BAD=2\n", "line 2: not a KEY=VALUE assignment"),
    ('A="never closed\n', "line 1: a double quote is not closed"),
    ("A='x' trailing\n", "line 1: text after the closing quote"),
])
def test_bad_lines_name_the_file_and_line(text: str, why: str) -> None:
    with pytest.raises(EnvFileError, match=why) as info:
        parse(text, "/etc/app.env")
    assert str(info.value).startswith("/etc/app.env, line")


def test_a_bad_line_is_never_shown_it_may_hold_a_secret() -> None:
    with pytest.raises(EnvFileError) as info:
        parse("DB_PASSWORD hunter2\n", "app.env")
    assert "hunter2" not in str(info.value)


NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
VALUES = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00\r\n\x1c\x1d\x1e\x85\u2028\u2029"
                                        "\x0b\x0c"), max_size=20)


@given(items=st.dictionaries(NAMES, VALUES, max_size=5))
def test_single_quoted_values_without_quotes_round_trip(items: dict[str, str]) -> None:
    items = {k: v for k, v in items.items() if "'" not in v}
    text = "".join(f"{k}='{v}'\n" for k, v in items.items())
    assert parse(text, "f") == items


@given(items=st.dictionaries(NAMES, VALUES, max_size=5))
def test_double_quoted_escaped_values_round_trip(items: dict[str, str]) -> None:
    def escape(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")

    text = "".join(f'{k}="{escape(v)}"\n' for k, v in items.items())
    assert parse(text, "f") == items
