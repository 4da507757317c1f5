"""The strict HTTP-date parser: the three RFC 9110 forms, and a precise reason for everything else.

Expected values come from the standard library (datetime, time.asctime, email.utils), never from the parser's
own tables, so a mistake cannot cancel itself out.
"""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from timeguard.measure.httpdate import (
    RFC850_REFERENCE_YEAR,
    HttpDateError,
    format_imf_fixdate,
    parse_http_date,
)
from timeguard.measure.sanity import EARLIEST_PLAUSIBLE_S

RFC_EXAMPLE_S = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110 §5.6.7)
WEEKDAYS_LONG = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def unix(dt: datetime) -> int:
    return int(dt.timestamp())


def rfc850(dt: datetime) -> str:
    return (
        f"{WEEKDAYS_LONG[dt.weekday()]}, {dt.day:02d}-{MONTHS[dt.month - 1]}-{dt.year % 100:02d} "
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} GMT"
    )


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "Sun Nov 06 08:49:37 1994",  # date3 allows 2DIGIT as well as SP DIGIT
        "  Sun, 06 Nov 1994 08:49:37 GMT\t",  # surrounding OWS is not part of a field value
    ],
)
def test_the_three_rfc_forms(value):
    assert parse_http_date(value) == RFC_EXAMPLE_S


def test_leap_second_is_read_as_the_second_before_it():
    # 2016-12-31 had a real leap second; the kernel repeats 23:59:59 while it is inserted.
    assert parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT") == unix(datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert parse_http_date("Sat Dec 31 23:59:60 2016") == unix(datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC))


def test_february_29_follows_the_gregorian_rules():
    assert parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT") == unix(datetime(2000, 2, 29, tzinfo=UTC))
    with pytest.raises(HttpDateError, match="day 29 does not exist in Feb 2100"):
        parse_http_date("Mon, 29 Feb 2100 00:00:00 GMT")
    with pytest.raises(HttpDateError, match="day 29 does not exist in Feb 2026"):
        parse_http_date("Sun, 29 Feb 2026 00:00:00 GMT")


def test_rfc850_two_digit_year_pivots_on_the_build_year_not_the_host_clock():
    assert datetime.fromtimestamp(EARLIEST_PLAUSIBLE_S, UTC).year == RFC850_REFERENCE_YEAR
    limit = RFC850_REFERENCE_YEAR + 50  # "more than 50 years in the future" is in the past century
    last_future = datetime(limit, 6, 1, tzinfo=UTC)
    first_past = datetime(limit - 99, 6, 1, tzinfo=UTC)
    assert parse_http_date(rfc850(last_future)) == unix(last_future)
    assert parse_http_date(rfc850(first_past)) == unix(first_past)
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == RFC_EXAMPLE_S


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "Date is empty"),
        (" \t ", "Date is empty"),
        ("0", "is not an HTTP-date"),  # the epoch-0 trap: garbage must never become 1970
        ("1994-11-06T08:49:37Z", "is not an HTTP-date"),
        ("Sun, 6 Nov 1994 08:49:37 GMT", "is not an HTTP-date"),  # day is 2DIGIT in IMF-fixdate
        ("Sun,  06 Nov 1994 08:49:37 GMT", "is not an HTTP-date"),
        ("Sun Nov 6 08:49:37 1994", "is not an HTTP-date"),  # asctime pads the day with a space
        ("Sun, 06 Nov 94 08:49:37 GMT", "is not an HTTP-date"),
        ("Mon, 06 Nov 1994 08:49:37 GMT", "1994-11-06 is a Sunday, not a Monday"),
        ("Monday, 06-Nov-94 08:49:37 GMT", "1994-11-06 is a Sunday, not a Monday"),
        ("Mon Nov  6 08:49:37 1994", "1994-11-06 is a Sunday, not a Monday"),
        ("Sunday, 06 Nov 1994 08:49:37 GMT", "'Sunday' is not a day name of the IMF-fixdate form"),
        ("Sun, 06-Nov-94 08:49:37 GMT", "'Sun' is not a day name of the rfc850-date form"),
        ("Xyz, 06 Nov 1994 08:49:37 GMT", "'Xyz' is not a day name"),
        ("Sun, 06 nov 1994 08:49:37 GMT", "'nov' is not a month"),  # the grammar is case-sensitive
        ("sun, 06 Nov 1994 08:49:37 GMT", "'sun' is not a day name"),
        ("Sun, 06 Foo 1994 08:49:37 GMT", "'Foo' is not a month"),
        ("Sun, 00 Nov 1994 08:49:37 GMT", "day 0 does not exist in Nov 1994"),
        ("Thu, 31 Nov 1994 08:49:37 GMT", "day 31 does not exist in Nov 1994"),
        ("Sun, 06 Nov 1994 24:00:00 GMT", "hour 24 is out of range"),
        ("Sun, 06 Nov 1994 08:60:00 GMT", "minute 60 is out of range"),
        ("Sun, 06 Nov 1994 08:49:61 GMT", "second 61 is out of range"),
        ("Sun, 06 Nov 1994 08:49:60 GMT", "second 60 is only valid as the leap second 23:59:60"),
        ("Sun, 06 Nov 1994 08:49:37 UTC", "time zone 'UTC' is not GMT"),
        ("Sun, 06 Nov 1994 08:49:37 +0000", "time zone '\\+0000' is not GMT"),
        ("Sun, 06 Nov 1994 08:49:37 gmt", "time zone 'gmt' is not GMT"),
        ("Sun, 06 Nov 1994 08:49:37", "no time zone"),
        ("Sun, 06 Nov 1994 08:49:37 GMT junk", "trailing characters ' junk' after GMT"),
        # Two Date headers, joined by requests as the field-combining rules say:
        ("Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:38 GMT", "trailing characters"),
        ("Sun, 06 Nov 1994 08:49:37 GMT\x00", "control characters"),
        ("Sun, 06 Nov 1994\t08:49:37 GMT", "control characters"),
        ("Sun, \u0660\u0666 Nov 1994 08:49:37 GMT", "non-ASCII"),  # Arabic-Indic digits are not DIGIT
        ("Sun Nov  6 08:49:37 1994 GMT", "trailing characters ' GMT' after the year"),
        ("Sun Nov  6 08:49:37 94", "is not an HTTP-date"),
    ],
)
def test_rejections_say_precisely_why(value, reason):
    with pytest.raises(HttpDateError, match=reason) as info:
        parse_http_date(value)
    assert info.value.reason == str(info.value)


def test_a_long_hostile_value_is_quoted_short():
    with pytest.raises(HttpDateError) as info:
        parse_http_date("x" * 10_000)
    assert len(info.value.reason) < 200


def test_non_text_is_an_http_date_error_too():
    with pytest.raises(HttpDateError, match="must be text"):
        parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT")  # type: ignore[arg-type]


def utc_seconds(first_year: int, last_year: int) -> st.SearchStrategy[datetime]:
    # hypothesis takes naive bounds by design and attaches the zone itself
    return st.datetimes(
        min_value=datetime(first_year, 1, 1),  # noqa: DTZ001
        max_value=datetime(last_year, 12, 31, 23, 59, 59),  # noqa: DTZ001
        timezones=st.just(UTC),
    ).map(lambda dt: dt.replace(microsecond=0))


any_second = utc_seconds(1, 9999)


@given(any_second)
@example(datetime(1970, 1, 1, tzinfo=UTC))
@example(datetime(2000, 2, 29, 12, tzinfo=UTC))
def test_imf_fixdate_round_trips(dt):
    text = email.utils.format_datetime(dt, usegmt=True)
    assert parse_http_date(text) == unix(dt)
    assert format_imf_fixdate(unix(dt)) == text


def asctime(dt: datetime) -> str:
    return f"{WEEKDAYS_LONG[dt.weekday()][:3]} {MONTHS[dt.month - 1]} {dt.day:2d} {dt:%H:%M:%S} {dt.year:04d}"


@given(any_second)
def test_asctime_round_trips(dt):
    text = asctime(dt)
    if dt.year >= 1000:  # C's asctime() does not pad the year to the 4DIGIT the grammar needs
        assert text == time.asctime(dt.timetuple())
    assert parse_http_date(text) == unix(dt)


@given(utc_seconds(RFC850_REFERENCE_YEAR - 49, RFC850_REFERENCE_YEAR + 50))
def test_rfc850_round_trips_within_its_century_window(dt):
    assert parse_http_date(rfc850(dt)) == unix(dt)


@given(st.text(max_size=60))
@example("Sun, 06 Nov 1994 08:49:37 GMT")
def test_random_text_raises_nothing_but_http_date_error(value):
    try:
        result = parse_http_date(value)
    except HttpDateError as exc:
        assert exc.reason
    else:
        assert isinstance(result, int)


valid_forms = st.sampled_from(
    ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"]
)


@given(valid_forms, st.integers(min_value=0, max_value=40), st.characters(codec="latin-1"))
def test_one_character_changed_either_parses_to_an_int_or_raises_http_date_error(value, at, char):
    at = min(at, len(value))
    mutated = value[:at] + char + value[at + 1 :]
    try:
        result = parse_http_date(mutated)
    except HttpDateError:
        return
    assert isinstance(result, int)
