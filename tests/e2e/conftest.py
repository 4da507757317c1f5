"""Fixtures of the end-to-end tests: a real django-celery-beat database, the clock beat (and the daemon) follow,
and honest time sources on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import beat as beatlib
from tests.support.beat import BeatDatabase
from tests.support.fake_http import running
from tests.support.fake_ntp import FakeNTPServer
from tests.support.realprogs import FakeClock, find_libfaketime, scratch_dir
from tests.support.require import need, need_program


@pytest.fixture(params=beatlib.KINDS)
def beat_db(request: pytest.FixtureRequest) -> Iterator[BeatDatabase]:
    """The seeded database on each kind (``indirect`` parametrisation picks kinds)."""
    with beatlib.seeded_database(request.param) as db:
        yield db


@pytest.fixture
def sqlite_db() -> Iterator[BeatDatabase]:
    with beatlib.seeded_database("sqlite") as db:
        yield db


@pytest.fixture
def beat_clock(ftshim: Path) -> FakeClock:
    """NO_CACHE (the default FakeClock): beat is a single, mostly idle thread, so re-reading the rc file on every
    clock call costs nothing, and a step is seen at its very next tick (CACHE_DURATION=1 would add 1–2 s). The
    daemon, many-threaded, follows ``beat_clock.sharing(1)``."""
    need(find_libfaketime(), "libfaketime.so.1 is not installed (apt-get install faketime libfaketime)")
    need_program("setpriv", "util-linux")
    return FakeClock(scratch_dir("beatclock"), ftshim=ftshim)


@pytest.fixture
def honest_ntp() -> Iterator[list[FakeNTPServer]]:
    """Three NTP servers at real time on loopback."""
    servers = [FakeNTPServer() for _ in range(3)]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def sources(honest_ntp: list[FakeNTPServer]) -> Iterator[dict[str, Any]]:
    """Honest loopback sources as tests.support.daemon.write_config takes them: the NTP servers and one HTTP
    Date server, all at real time."""
    with running() as http:
        yield {"ntp": honest_ntp, "http": http}
