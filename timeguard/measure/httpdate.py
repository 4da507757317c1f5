"""Strict, locale-independent parser for the HTTP ``Date`` header (RFC 9110 §5.6.7).

A Date that does not parse must drop the sample, never become a time: htpdate forks have set clocks to 1970
from a failed parse (research/time_anchors.md §3.1). So this parser accepts exactly the three forms RFC 9110
defines and explains every rejection::

    IMF-fixdate   Sun, 06 Nov 1994 08:49:37 GMT
    rfc850-date   Sunday, 06-Nov-94 08:49:37 GMT     (obsolete)
    asctime-date  Sun Nov  6 08:49:37 1994           (obsolete)

Choices where the RFC leaves room, made for a time source rather than a browser:

* Names are case-sensitive, as the grammar writes them (``%s"Sun"``, ``%s"GMT"``).
* The weekday must match the date: a server that gets it wrong is not one to take the time from.
* Leading and trailing SP/HTAB are ignored (RFC 9110 §5.5: they are not part of a field value); anything
  else after the date is an error.
* Second 60 is accepted only as the leap second ``23:59:60`` and read as ``23:59:59``, the UNIX second the
  Linux kernel repeats while the leap second is inserted; so the value never runs ahead of the server.
* A two-digit rfc850 year that would lie more than 50 years after the reference year (the year of
  :data:`timeguard.measure.sanity.EARLIEST_PLAUSIBLE_S`, not the host clock, which may be the thing that is wrong)
  is in the previous century.
* No ``strptime`` (locale), no ``email.utils`` (lenient, returns None, guesses zones).
"""

from __future__ import annotations

import re
import time

from timeguard.measure.sanity import EARLIEST_PLAUSIBLE_S

__all__ = ["HttpDateError", "format_imf_fixdate", "parse_http_date"]

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # index = ISO weekday − 1
_DAY_NAMES_LONG = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

#: The reference year for two-digit rfc850 years (fixed at build time, independent of the host clock).
RFC850_REFERENCE_YEAR = time.gmtime(EARLIEST_PLAUSIBLE_S).tm_year

_EXAMPLE = "'Sun, 06 Nov 1994 08:49:37 GMT'"

# Only ASCII reaches these (checked first); digits are spelled [0-9] all the same (\d accepts Unicode digits).
_TIME = r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
_IMF = re.compile(
    r"(?P<wday>[A-Za-z]+), (?P<day>[0-9]{2}) (?P<month>[A-Za-z]{3}) (?P<year>[0-9]{4}) " + _TIME + r"(?P<rest>.*)",
    re.ASCII | re.DOTALL,
)
_RFC850 = re.compile(
    r"(?P<wday>[A-Za-z]+), (?P<day>[0-9]{2})-(?P<month>[A-Za-z]{3})-(?P<year>[0-9]{2}) " + _TIME + r"(?P<rest>.*)",
    re.ASCII | re.DOTALL,
)
_ASCTIME = re.compile(
    r"(?P<wday>[A-Za-z]{3}) (?P<month>[A-Za-z]{3}) (?P<day>[0-9]{2}| [0-9]) " + _TIME + r" (?P<year>[0-9]{4})"
    r"(?P<rest>.*)",
    re.ASCII | re.DOTALL,
)


class HttpDateError(ValueError):
    """A ``Date`` value that is not an RFC 9110 HTTP-date; ``reason`` says precisely why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_http_date(value: str) -> int:
    """The UNIX time (whole seconds, UTC) an RFC 9110 HTTP-date names.

    Raises :class:`HttpDateError` for anything else; never returns a default such as 0.
    """
    if not isinstance(value, str):
        raise HttpDateError(f"Date must be text, got {type(value).__name__}")
    text = value.strip(" \t")
    if not text:
        raise HttpDateError("Date is empty")
    if not text.isascii():
        raise HttpDateError(f"Date {_show(value)} contains non-ASCII characters")
    if not text.isprintable():
        raise HttpDateError(f"Date {_show(value)} contains control characters")

    if m := _IMF.fullmatch(text):
        form, long_names = "IMF-fixdate", False
        year = int(m["year"])
        _expect_gmt(m["rest"], value)
    elif m := _RFC850.fullmatch(text):
        form, long_names = "rfc850-date", True
        year = _rfc850_year(int(m["year"]))
        _expect_gmt(m["rest"], value)
    elif m := _ASCTIME.fullmatch(text):
        form, long_names = "asctime-date", False
        year = int(m["year"])
        if m["rest"]:
            raise HttpDateError(f"Date {_show(value)} has trailing characters {_show(m['rest'], 20)} after the year")
    else:
        raise HttpDateError(f"Date {_show(value)} is not an HTTP-date (expected e.g. {_EXAMPLE})")

    month_name = m["month"]
    if month_name not in _MONTHS:
        raise HttpDateError(f"Date {_show(value)}: {month_name!r} is not a month (Jan, Feb, ... Dec)")
    month = _MONTHS.index(month_name) + 1
    day = int(m["day"])  # the asctime form pads with a space; int() accepts " 6"
    if not 1 <= day <= _days_in_month(year, month):
        raise HttpDateError(f"Date {_show(value)}: day {day} does not exist in {month_name} {year:04d}")
    hour, minute, second = int(m["hour"]), int(m["minute"]), int(m["second"])
    if hour > 23:
        raise HttpDateError(f"Date {_show(value)}: hour {hour} is out of range 00-23")
    if minute > 59:
        raise HttpDateError(f"Date {_show(value)}: minute {minute} is out of range 00-59")
    if second == 60:
        if (hour, minute) != (23, 59):
            raise HttpDateError(f"Date {_show(value)}: second 60 is only valid as the leap second 23:59:60")
        second = 59
    elif second > 60:
        raise HttpDateError(f"Date {_show(value)}: second {second} is out of range 00-60")

    days = _days_from_civil(year, month, day)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday (index 3)
    names = _DAY_NAMES_LONG if long_names else _DAY_NAMES
    if m["wday"] != names[weekday]:
        if m["wday"] not in names:
            expected = "Monday, ... Sunday" if long_names else "Mon, ... Sun"
            raise HttpDateError(f"Date {_show(value)}: {m['wday']!r} is not a day name of the {form} form ({expected})")
        raise HttpDateError(
            f"Date {_show(value)}: {year:04d}-{month:02d}-{day:02d} is a {_DAY_NAMES_LONG[weekday]}, "
            f"not a {_DAY_NAMES_LONG[names.index(m['wday'])]}"
        )
    return days * 86400 + hour * 3600 + minute * 60 + second


def format_imf_fixdate(unix_s: int) -> str:
    """The IMF-fixdate for a whole UNIX second (the preferred form; what servers send)."""
    days, rem = divmod(unix_s, 86400)
    year, month, day = _civil_from_days(days)
    hour, rem = divmod(rem, 3600)
    minute, second = divmod(rem, 60)
    return (
        f"{_DAY_NAMES[(days + 3) % 7]}, {day:02d} {_MONTHS[month - 1]} {year:04d} "
        f"{hour:02d}:{minute:02d}:{second:02d} GMT"
    )


def _expect_gmt(rest: str, value: str) -> None:
    if rest == " GMT":
        return
    if rest.startswith(" GMT"):
        raise HttpDateError(f"Date {_show(value)} has trailing characters {_show(rest[4:], 20)} after GMT")
    if not rest.startswith(" ") or rest == " ":
        raise HttpDateError(f"Date {_show(value)} has no time zone after the time (expected ' GMT')")
    zone = rest[1:].split(" ", 1)[0]
    raise HttpDateError(f"Date {_show(value)}: time zone {_show(zone, 20)} is not GMT (HTTP dates are always GMT)")


def _rfc850_year(two_digits: int) -> int:
    # RFC 9110: a two-digit year that "appears to be more than 50 years in the future" is in the past century.
    year = RFC850_REFERENCE_YEAR // 100 * 100 + two_digits
    if year > RFC850_REFERENCE_YEAR + 50:
        year -= 100
    return year


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if _is_leap(year) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant's algorithm; exact integers)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _show(value: str, limit: int = 60) -> str:
    """The header as quoted in a message, cut short so a hostile server cannot flood the log."""
    return repr(value if len(value) <= limit else value[:limit] + "...")
