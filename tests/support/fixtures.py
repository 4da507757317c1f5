"""pytest fixtures for tests that run real programs (load with ``pytest_plugins = ["tests.support.fixtures"]``).

Every fixture first calls ``need_program``/``need`` for what it runs, so a developer without, say, chrony gets a
skip naming the Debian package, while CI (TIMEGUARD_REQUIRE_REAL=1) fails instead. Everything a fixture starts is
stopped by PID in its finaliser (see realprogs for the safety rules).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from tests.support import realprogs
from tests.support.realprogs import (
    ChronyServer,
    FakeClock,
    NginxServer,
    PythonDateServer,
    TlsFiles,
    find_libfaketime,
)
from tests.support.require import need, need_program


@pytest.fixture(scope="session", autouse=True)
def _realprogs_session() -> Iterator[None]:
    """At session end: stop anything a test leaked (by PID), then remove the scratch base."""
    yield
    realprogs.stop_all()
    realprogs.remove_scratch()


@pytest.fixture(scope="session")
def ftshim() -> Path:
    """ftshim.so (R1), compiled once per session; required for Python ≥ 3.11 under libfaketime."""
    need_program("gcc", "gcc libc6-dev")
    return realprogs.default_ftshim()


@pytest.fixture
def fake_clock(ftshim: Path) -> Iterator[FakeClock]:
    """A FakeClock at +0; processes started with ``fake_clock.env()`` or ``run_under_clock`` follow it."""
    need(find_libfaketime(), "libfaketime.so.1 is not installed (apt-get install faketime libfaketime)")
    need_program("setpriv", "util-linux")
    clock = FakeClock(realprogs.scratch_dir("clock"), ftshim=ftshim)
    yield clock
    # The directory goes with the session's scratch base: a daemon a later fixture stops may still read it.


def _servers(cls: type[Any]) -> Iterator[Callable[..., Any]]:
    """A factory fixture body: ``start(clock=None, **kwargs)`` builds and starts a ``cls``; all stop at teardown."""
    servers: list[Any] = []

    def start(clock: FakeClock | None = None, **kwargs: Any) -> Any:
        server = cls(clock=clock, **kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def chrony_server() -> Iterator[Callable[..., ChronyServer]]:
    """Factory: ``chrony_server(clock=None, *, port=None, local_stratum=2, bind=..., synchronised=True)``.

    Returns a started ChronyServer (it has answered an NTP query); all are stopped at teardown.
    """
    need_program("chronyd", "chrony")
    need_program("setpriv", "util-linux")
    need(os.geteuid() == 0, "chronyd must be started as root (it drops to _chrony itself)")
    need(_user_exists("_chrony"), "user _chrony is missing (apt-get install chrony)")
    yield from _servers(ChronyServer)


@pytest.fixture
def nginx_server() -> Iterator[Callable[..., NginxServer]]:
    """Factory: ``nginx_server(clock=None, *, port=None, tls=None)`` → started NginxServer (``.url``)."""
    need_program("nginx", "nginx-light")
    need_program("setpriv", "util-linux")
    yield from _servers(NginxServer)


@pytest.fixture
def python_date_server() -> Iterator[Callable[..., PythonDateServer]]:
    """Factory: ``python_date_server(clock=None, *, port=None)`` → started PythonDateServer (``.url``)."""
    need_program("setpriv", "util-linux")
    yield from _servers(PythonDateServer)


@pytest.fixture(scope="session")
def test_ca() -> TlsFiles:
    """(ca_bundle, cert, key): a throw-away CA and a server cert for localhost, 127.0.0.1 and ::1."""
    try:
        import trustme  # noqa: F401 - only to know whether it is there
    except ImportError:
        need(False, "trustme is not installed (pip install -e '.[test]')")
    return realprogs.make_test_ca(realprogs.scratch_dir("ca"))


@pytest.fixture
def qemu_guest() -> Callable[..., CompletedProcess[str]]:
    """The real-kernel runner: ``qemu_guest(script_text, timeout_s=120, python=None)`` → CompletedProcess (guest
    console, the script's exit code); see realprogs.qemu_run."""
    need_program("qemu-system-x86_64", "qemu-system-x86")
    need_program("setpriv", "util-linux")
    need_program("gcc", "gcc libc6-dev")  # the guest's static init
    try:
        realprogs.guest_kernel()
    except (OSError, RuntimeError) as exc:
        need(False, f"Debian's kernel for the QEMU guest is not available (run .ci/setup): {exc}")
    return realprogs.qemu_run


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def sources() -> Iterator[dict[str, Any]]:
    """Sources for a daemon under test: three FakeNTPServers (``"ntp"``) and a FakeDateServer (``"http"``)."""
    from tests.support.fake_http import running
    from tests.support.fake_ntp import FakeNTPServer

    servers = [FakeNTPServer() for _ in range(3)]
    with running() as http:
        yield {"ntp": servers, "http": http}
    for server in servers:
        server.close()
