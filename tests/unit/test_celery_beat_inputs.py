"""The celery_beat repair's inputs (issue 9): every numeric option of the hook, the CLI and the engine refuses NaN,
±inf, negatives, non-numbers and out-of-range values; a NaN offset or bound never passes the evidence gate; URLs
without a driver get the drivers the extra installs; a password in the URL (userinfo or ``?password=``) is never
shown."""

from __future__ import annotations

import argparse
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeguard.cli import repair as repair_cli
from timeguard.hooks.api import HookConfigError, HookContext, HookStatus
from timeguard.hooks.registry import HOOK_TYPES
from timeguard.repair.celery_beat import (
    NUMERIC_OPTIONS,
    URL_ENV,
    CeleryBeatRepair,
    RepairError,
    checked_now,
    number_arg,
    number_problem,
)
from timeguard.repair.evidence import evidence_problem
from timeguard.repair.hook import CeleryBeatHook

GOOD = {"status": "OK", "offset_s": 0.02, "offset_lo_s": 0.0, "offset_hi_s": 0.04, "ntp_http_agree": True,
        "summary": "ok"}
T = 1_780_000_000.0
ENGINE_KEYS = ("tolerance_s", "beat_max_interval_s", "wait_margin_s", "max_rounds", "lock_timeout_s",
               "connect_timeout_s")
HOOK_KEYS = ("tolerance_s", "beat_max_interval_s", "wait_margin_s", "max_rounds", "lock_timeout_s", "max_offset_s")


def bad_numbers(key: str) -> st.SearchStrategy[Any]:
    """Every class of value the option ``key`` must refuse."""
    low, high, whole = NUMERIC_OPTIONS[key]
    classes = [
        st.sampled_from([math.nan, math.inf, -math.inf, -0.5, -1]),
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not (math.isfinite(v) and low <= v <= high)),
        st.integers().filter(lambda v: not low <= v <= high),
        st.text(max_size=8), st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
    ]
    if whole:
        classes.append(st.floats(min_value=low, max_value=high).filter(lambda v: not v.is_integer()))
    return st.one_of(classes)


def good_number(key: str) -> st.SearchStrategy[Any]:
    low, high, whole = NUMERIC_OPTIONS[key]
    if whole:
        return st.integers(min_value=int(low), max_value=int(high))
    return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)


@given(data=st.data())
def test_every_engine_number_refuses_every_bad_class(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(ENGINE_KEYS))
    value = data.draw(bad_numbers(key).filter(lambda v: not (key == "tolerance_s" and v is None)))  # None: default
    assert number_problem(key, value) is not None
    with pytest.raises(RepairError, match=key):
        CeleryBeatRepair("sqlite:///x", **{key: value})


@given(data=st.data())
def test_every_engine_number_accepts_its_range(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(ENGINE_KEYS))
    value = data.draw(good_number(key))
    assert number_problem(key, value) is None
    engine = CeleryBeatRepair("sqlite:///x", **{key: value})
    assert getattr(engine, key) == value


@given(data=st.data())
def test_every_hook_number_refuses_every_bad_class(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(HOOK_KEYS))
    value = data.draw(bad_numbers(key))
    with pytest.raises(HookConfigError) as info:
        CeleryBeatHook.from_config("beat", {"database_url_env": "TG_BEAT_URL", key: value})
    assert [k for k, _ in info.value.problems] == [key]


def test_hook_max_offset_nan_is_refused_not_a_disabled_check() -> None:
    # the example: `max_offset_s: .nan` made `abs(offset) > nan` False, so every offset passed
    with pytest.raises(HookConfigError, match="max_offset_s"):
        CeleryBeatHook.from_config("beat", {"database_url_env": "TG_BEAT_URL", "max_offset_s": math.nan})
    with pytest.raises(HookConfigError, match="must not exceed tolerance_s"):
        CeleryBeatHook.from_config("beat", {"database_url_env": "TG_BEAT_URL", "max_offset_s": 3600})
    hook = CeleryBeatHook.from_config("beat", {"database_url_env": "TG_BEAT_URL", "max_offset_s": 3600,
                                               "tolerance_s": 7200})
    assert hook.max_offset_s == 3600


@given(data=st.data())
def test_every_cli_number_is_a_usage_error(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(["tolerance_s", "beat_max_interval_s", "max_rounds"]))
    text = data.draw(st.one_of(
        st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-1", "-0.001", "", "five", "1e9"]),
        bad_numbers(key).filter(lambda v: isinstance(v, int | float) and not isinstance(v, bool)).map(repr)))
    with pytest.raises(argparse.ArgumentTypeError, match="must be"):
        number_arg(key)(text)


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--tolerance-s", "nan"], "--tolerance-s"), (["--tolerance-s=-5"], "--tolerance-s"),
        (["--tolerance-s", "inf"], "--tolerance-s"), (["--beat-max-interval-s", "nan"], "--beat-max-interval-s"),
        (["--max-rounds", "0"], "--max-rounds"), (["--max-rounds", "2.5"], "--max-rounds"),
    ],
)
def test_cli_parser_exits_2_naming_the_option(argv: list[str], option: str, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    parser = argparse.ArgumentParser(prog="timeguard")
    repair_cli.add_parser(parser.add_subparsers(dest="command"), lambda p: p.add_argument("--config"))
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["repair", "celery-beat", "--database-url", "sqlite:///x", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must be" in err and "Traceback" not in err
    ok = parser.parse_args(["repair", "celery-beat", "--database-url", "sqlite:///x", "--max-rounds", "2",
                            "--tolerance-s", "60"])
    assert (ok.max_rounds, ok.tolerance_s) == (2, 60.0)


@given(offset=st.floats(allow_nan=True, allow_infinity=True),
       bound=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1.0, 0.0, math.nan])))
def test_evidence_never_passes_a_nan_or_infinite_offset_or_bound(offset: float, bound: float) -> None:
    problem = evidence_problem({**GOOD, "offset_s": offset, "offset_lo_s": offset - 0.01, "offset_hi_s": offset + 0.01},
                               bound)
    if problem is None:
        assert math.isfinite(offset) and math.isfinite(bound) and 0 <= abs(offset) + 0.01 <= bound


@given(lo=st.floats(-1e6, 1e6), width=st.floats(0, 1e6), at=st.floats(0, 1), bound=st.floats(0, 10),
       missing=st.sampled_from([None, "offset_lo_s", "offset_hi_s"]))
def test_evidence_holds_for_every_point_of_the_interval_not_only_the_estimate(
        lo: float, width: float, at: float, bound: float, missing: str | None) -> None:
    """A repair writes the host's now: it needs every offset the sources leave possible within max_offset_s,
    and a verdict without a finite interval around its estimate is no evidence at all."""
    hi = lo + width
    verdict = {**GOOD, "offset_s": lo + at * width, "offset_lo_s": lo, "offset_hi_s": hi}
    if missing:
        del verdict[missing]
    problem = evidence_problem(verdict, bound)
    if problem is None:
        assert missing is None and max(abs(lo), abs(hi)) <= bound
    elif missing is None and abs(verdict["offset_s"]) <= bound:  # the interval, not the estimate, refused it
        assert max(abs(lo), abs(hi)) > bound and "do not pin the clock down" in problem


@pytest.mark.parametrize("trusted", [math.nan, math.inf, -math.inf, 1e300, -1e300])
def test_a_nan_trusted_now_never_reaches_the_database(trusted: float, tmp_path: Any) -> None:
    from timeguard.events import Event, EventKind

    with pytest.raises(RepairError, match="not a usable time"):
        checked_now(trusted)
    hook = CeleryBeatHook.from_config("beat", {"database_url": f"sqlite:///{tmp_path / 'never.sqlite3'}"})
    ctx = HookContext(dry_run=False, trusted_now=lambda: trusted, verdict=GOOD, hostname="h")
    ev = Event(kind=EventKind.ROLLBACK, incident_id="i", wall_time_s=T, monotonic_s=1.0, boot_id="b")
    result = hook.handle(ev, ctx)
    assert result.status in (HookStatus.SKIPPED, HookStatus.FAILED)
    assert "no trusted time" in result.summary or "not a usable time" in result.summary
    with pytest.raises(RepairError, match="not a usable time"):
        CeleryBeatRepair(f"sqlite:///{tmp_path / 'never.sqlite3'}").plan(trusted)
    assert not (tmp_path / "never.sqlite3").exists()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("mysql://beat@db/app", "mysql+pymysql"), ("mariadb://beat@db/app", "mariadb+pymysql"),
        ("postgres://beat@db/app", "postgresql+psycopg"), ("postgresql://beat@db/app", "postgresql+psycopg"),
        ("mysql+pymysql://beat@db/app", "mysql+pymysql"), ("postgresql+psycopg://beat@db/app", "postgresql+psycopg"),
    ],
)
def test_urls_without_a_driver_get_the_installed_one(url: str, driver: str) -> None:
    engine = CeleryBeatRepair(url)
    assert engine.url.drivername == driver
    assert engine.where == url  # shown (and fingerprinted) as written
    engine._get_engine().dispose()  # the dialect loads: no ImportError, no "install the extra"


def test_a_driver_that_is_not_installed_names_the_one_that_is() -> None:
    engine = CeleryBeatRepair("mysql+mysqldb://beat:hunter22@db/app")
    with pytest.raises(RepairError) as info:
        engine._get_engine()
    message = str(info.value)
    assert "mysqldb" in message.lower() and "mysql+pymysql://" in message and "hunter22" not in message


# "pw!": no other part of the test URLs holds a "!", so finding the secret in a message is a leak, not a collision
SECRETS = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20).map(
    lambda t: f"pw!{t}")


@given(secret=SECRETS, where=st.sampled_from(["query", "userinfo", "both"]),
       backend=st.sampled_from(["postgresql+psycopg", "mysql+pymysql", "postgres", "mariadb"]))
def test_a_url_password_is_never_shown(secret: str, where: str, backend: str) -> None:
    import urllib.parse

    quoted = urllib.parse.quote(secret, safe="")
    user = f"beat:{quoted}@" if where in ("userinfo", "both") else "beat@"
    query = f"?sslmode=disable&password={quoted}" if where in ("query", "both") else ""
    engine = CeleryBeatRepair(f"{backend}://{user}db.example:5432/app{query}")
    for text in (engine.where, engine.fingerprint, engine._scrub(f"driver said: password={secret} ({quoted})")):
        assert secret not in text and quoted not in text
    assert "***" in engine.where


def test_the_fingerprint_names_the_database_without_its_password() -> None:
    """(Journals that older versions wrote with the password in clear are scrubbed by journal migration 5.)"""
    engine = CeleryBeatRepair("postgresql+psycopg://beat@db/app?password=hunter22&sslmode=disable")
    assert engine.fingerprint == "postgresql+psycopg://beat@db/app?password=***&sslmode=disable#django_celery_beat_"
    assert engine.same_database("postgresql+psycopg://beat@db/app?password=***&sslmode=disable#django_celery_beat_")
    assert not engine.same_database("postgresql+psycopg://beat@db/other?password=***#django_celery_beat_")


QUERY_NAMES = st.sampled_from(["port", "bogus", "sslmode", "connect_timeout", "charset", "application_name",
                               "read_timeout", "options", "host", "user"])
QUERY_VALUES = st.text(alphabet="abcxyz0123456789-_.", min_size=0, max_size=12)


@given(scheme=st.sampled_from(["mysql", "mariadb", "postgres", "postgresql", "mysql+pymysql", "postgresql+psycopg"]),
       options=st.lists(st.tuples(QUERY_NAMES, QUERY_VALUES), max_size=3), secret=SECRETS)
def test_any_url_option_is_a_one_line_error_without_the_password(scheme: str, options: list[tuple[str, str]],
                                                                  secret: str) -> None:
    """Whatever options the URL carries, a driver that refuses them (TypeError, ValueError) or a server that is not
    there gives a RepairError, never a traceback, and never shows the password."""
    import urllib.parse

    query = urllib.parse.urlencode([*options, ("password", secret)])
    try:
        engine = CeleryBeatRepair(f"{scheme}://beat@127.0.0.1:1/app?{query}", connect_timeout_s=1)
        engine.plan(T)
    except RepairError as exc:
        message = str(exc)
    else:  # pragma: no cover - nothing listens on port 1
        raise AssertionError("connected to 127.0.0.1:1")
    assert secret not in message and urllib.parse.quote_plus(secret) not in message
    assert "\n" not in message


@given(data=st.data())
def test_a_bad_number_in_the_config_file_names_the_line_and_key(data: st.DataObject) -> None:
    from timeguard.config import ConfigError, loads

    key = data.draw(st.sampled_from(HOOK_KEYS))
    literal = data.draw(st.sampled_from([".nan", ".NaN", ".inf", "-.inf", "-1", "-0.5", "1e400", "'5'", "true",
                                         "null", "[1]"]))
    text = (f"hooks:\n  - type: celery_beat\n    name: beat\n    database_url_env: TG_BEAT_URL\n"
            f"    {key}: {literal}\n")
    with pytest.raises(ConfigError) as info:
        loads(text, "beat.yaml", hook_types=HOOK_TYPES)
    [problem] = info.value.problems
    assert str(problem.path) == f"hooks[0].{key}" and problem.line == 5, problem
